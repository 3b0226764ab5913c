// SnapshotMetadata of csi.shale.io (docs/csi.md, "SnapshotMetadata"): the allocated ranges of a
// snapshot and the ranges changed between two snapshots of a volume, streamed as VARIABLE_LENGTH
// extents (4 KiB aligned, merged), resumable with starting_offset, paged by max_results.
#include <algorithm>

#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "engine/common/block.h"
#include "snapshot/snapshot_manager.h"

namespace shale::csi {

namespace v1 = ::csi::v1;

std::vector<std::vector<ByteRange>> PageRanges(const std::vector<ByteRange>& ranges,
                                               uint64_t starting_offset, size_t max_results) {
  const size_t page = max_results == 0 ? kDefaultMetadataPage : max_results;
  const uint64_t start = starting_offset / kBlockSize * kBlockSize;
  std::vector<std::vector<ByteRange>> pages;
  for (const auto& [offset, length] : ranges) {
    const uint64_t end = offset + length;
    if (end <= start) continue;
    const uint64_t from = std::max(offset, start);
    if (pages.empty() || pages.back().size() >= page) pages.emplace_back();
    pages.back().emplace_back(from, end - from);
  }
  return pages;
}

namespace {

// A snapshot id as an RPC gets it: NotFound when no snapshot can have it.
Status CheckSnapshotId(const std::string& id, std::string_view field) {
  if (!snapshot::ParseSnapshotRef(id).ok()) {
    return Status::NotFound(std::string(field) + " " + id + " not found");
  }
  return Status::Ok();
}

grpc::Status CheckPaging(int64_t starting_offset, int32_t max_results) {
  if (starting_offset < 0) return Invalid("starting_offset must not be negative");
  if (max_results < 0) return Invalid("max_results must not be negative");
  return grpc::Status::OK;
}

// Streams `ranges` from the request's offset; OUT_OF_RANGE for an offset at or past the end.
template <typename Response>
grpc::Status Stream(grpc::ServerContext* context, const snapshot::SnapshotManager::Ranges& r,
                    int64_t starting_offset, int32_t max_results,
                    grpc::ServerWriter<Response>* writer) {
  if (static_cast<uint64_t>(starting_offset) >= r.size_bytes) {
    return grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                        "starting_offset " + std::to_string(starting_offset) +
                            " is at or past the end of the snapshot (" +
                            std::to_string(r.size_bytes) + " bytes)");
  }
  auto pages = PageRanges(r.ranges, static_cast<uint64_t>(starting_offset),
                          static_cast<size_t>(max_results));
  if (pages.empty()) pages.emplace_back();  // one message: the type and the capacity
  for (const std::vector<ByteRange>& page : pages) {
    if (context != nullptr && context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    Response response;
    response.set_block_metadata_type(v1::VARIABLE_LENGTH);
    response.set_volume_capacity_bytes(static_cast<int64_t>(r.size_bytes));
    for (const auto& [offset, length] : page) {
      v1::BlockMetadata* b = response.add_block_metadata();
      b->set_byte_offset(static_cast<int64_t>(offset));
      b->set_size_bytes(static_cast<int64_t>(length));
    }
    if (!writer->Write(response)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
  }
  return grpc::Status::OK;
}

}  // namespace

grpc::Status SnapshotMetadataService::GetMetadataAllocated(
    grpc::ServerContext* context, const v1::GetMetadataAllocatedRequest* request,
    grpc::ServerWriter<v1::GetMetadataAllocatedResponse>* writer) {
  if (grpc::Status st =
          RequireFields("GetMetadataAllocated", {{"snapshot_id", !request->snapshot_id().empty()}});
      !st.ok()) {
    return st;
  }
  if (grpc::Status st = CheckPaging(request->starting_offset(), request->max_results()); !st.ok())
    return st;
  if (Status st = CheckSnapshotId(request->snapshot_id(), "snapshot"); !st.ok()) return ToGrpc(st);
  auto ranges = snapshots_->AllocatedRanges(request->snapshot_id());
  if (!ranges.ok()) return ToGrpc(ranges.status());
  return Stream(context, *ranges, request->starting_offset(), request->max_results(), writer);
}

grpc::Status SnapshotMetadataService::GetMetadataDelta(
    grpc::ServerContext* context, const v1::GetMetadataDeltaRequest* request,
    grpc::ServerWriter<v1::GetMetadataDeltaResponse>* writer) {
  if (grpc::Status st = RequireFields(
          "GetMetadataDelta", {{"base_snapshot_id", !request->base_snapshot_id().empty()},
                               {"target_snapshot_id", !request->target_snapshot_id().empty()}});
      !st.ok()) {
    return st;
  }
  if (grpc::Status st = CheckPaging(request->starting_offset(), request->max_results()); !st.ok())
    return st;
  if (Status st = CheckSnapshotId(request->base_snapshot_id(), "base snapshot"); !st.ok())
    return ToGrpc(st);
  if (Status st = CheckSnapshotId(request->target_snapshot_id(), "target snapshot"); !st.ok())
    return ToGrpc(st);
  auto ranges =
      snapshots_->ChangedRanges(request->base_snapshot_id(), request->target_snapshot_id());
  if (!ranges.ok()) return ToGrpc(ranges.status());
  return Stream(context, *ranges, request->starting_offset(), request->max_results(), writer);
}

}  // namespace shale::csi
