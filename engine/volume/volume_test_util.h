// Test fixture pieces for the volume layer: a reactor, a pool on a memory device, volumes
// created directly from records, and synchronous I/O helpers.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <future>

#include "engine/io/memory_device.h"
#include "engine/io/reactor.h"
#include "engine/pool/keys.h"
#include "engine/pool/pool.h"
#include "engine/volume/volume.h"

namespace shale::testing {

inline Status RunVolumeIo(Volume& vol, VolumeOp op, uint64_t offset, uint64_t length, uint8_t* buf,
                          uint32_t flags = 0) {
  std::promise<Status> result;
  VolumeIo io;
  io.op = op;
  io.offset = offset;
  io.length = length;
  io.buf = buf;
  io.flags = flags;
  io.ctx = &result;
  io.done = [](VolumeIo* done_io) {
    static_cast<std::promise<Status>*>(done_io->ctx)->set_value(done_io->status);
  };
  auto fut = result.get_future();
  vol.reactor()->Post([&] { vol.Submit(&io); });
  return fut.get();
}

inline std::vector<uint8_t> Pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < len; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    v[i] = static_cast<uint8_t>(x);
  }
  return v;
}

class VolumeFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-volume-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto r = Reactor::Start({.name = "vol-test"});
    ASSERT_TRUE(r.ok()) << r.status();
    reactor_ = std::move(r).value();
    device_ = MakeDevice();
    auto pool = Pool::Create(
        device_, {.name = "tank", .metadata_dir = dir_ + "/meta", .cluster_size = cluster_size_});
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(pool).value();
  }
  void TearDown() override {
    CloseAll();
    pool_.reset();
    reactor_.reset();
    std::filesystem::remove_all(dir_);
  }
  virtual std::shared_ptr<BlockDevice> MakeDevice() {
    return std::make_shared<MemoryDevice>(pool_size_);
  }

  // Creates and commits the records of a new volume, returns the live object.
  Volume* CreateVolume(const std::string& name, uint64_t size, bool read_only = false) {
    MetaBatch batch;
    meta::VolumeRecord rec;
    rec.set_id(pool_->ReserveVolumeId(&batch));
    rec.set_name(name);
    rec.set_size_bytes(size);
    rec.set_head_image(pool_->ReserveImageId(&batch));
    rec.set_read_only(read_only);
    meta::ImageRecord img;
    img.set_id(rec.head_image());
    img.set_volume_id(rec.id());
    img.set_kind(meta::IMAGE_HEAD);
    batch.Put(keys::Volume(rec.id()), rec.SerializeAsString());
    batch.Put(keys::Image(img.id()), img.SerializeAsString());
    EXPECT_TRUE(pool_->meta().Write(batch).ok());
    records_[name] = rec;
    return OpenVolume(name);
  }

  Volume* OpenVolume(const std::string& name) {
    const auto& rec = records_.at(name);
    uint64_t owned = 0;
    auto map = Volume::LoadMap(*pool_, {rec.head_image()}, rec.size_bytes(), &owned);
    EXPECT_TRUE(map.ok()) << map.status();
    auto vol = std::make_unique<Volume>(
        pool_.get(), reactor_.get(), rec, std::vector<uint64_t>{rec.head_image()},
        std::move(map).value(), Volume::Options{.commit_interval_ns = 0});
    reactor_->RunSync([&] { vol->Start(); });
    Volume* raw = vol.get();
    volumes_[name] = std::move(vol);
    return raw;
  }

  Status CloseVolume(const std::string& name) {
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Status::Ok();
    std::promise<Status> p;
    Volume* v = it->second.get();
    reactor_->Post([&] { v->Close([&](const Status& s) { p.set_value(s); }); });
    Status s = p.get_future().get();
    volumes_.erase(it);
    return s;
  }

  void CloseAll() {
    std::vector<std::string> names;
    for (auto& [n, v] : volumes_) names.push_back(n);
    for (auto& n : names) CloseVolume(n).IgnoreError();
  }

  Status Write(Volume* v, uint64_t off, const std::vector<uint8_t>& data, uint32_t flags = 0) {
    AlignedBuffer buf = AllocateAligned(data.size());
    std::memcpy(buf.get(), data.data(), data.size());
    return RunVolumeIo(*v, VolumeOp::kWrite, off, data.size(), buf.get(), flags);
  }
  std::vector<uint8_t> Read(Volume* v, uint64_t off, uint64_t len, Status* st = nullptr) {
    AlignedBuffer buf = AllocateAligned(len);
    std::memset(buf.get(), 0xee, len);
    Status s = RunVolumeIo(*v, VolumeOp::kRead, off, len, buf.get());
    if (st) *st = s;
    EXPECT_TRUE(st != nullptr || s.ok()) << s;
    return std::vector<uint8_t>(buf.get(), buf.get() + len);
  }
  Status Flush(Volume* v) { return RunVolumeIo(*v, VolumeOp::kFlush, 0, 0, nullptr); }

  std::string dir_;
  uint64_t pool_size_ = 256 * kMiB;
  uint32_t cluster_size_ = 64 * kKiB;
  std::unique_ptr<Reactor> reactor_;
  std::shared_ptr<BlockDevice> device_;
  std::unique_ptr<Pool> pool_;
  std::map<std::string, meta::VolumeRecord> records_;
  std::map<std::string, std::unique_ptr<Volume>> volumes_;
};

}  // namespace shale::testing
