// Backups of snapshots to S3 end to end (docs/backup.md): the real shaled and shale against a
// real S3-protocol server (s3rver, started here on loopback), checked with an independent S3
// client (s3cmd) and independent tools (qemu-img compare, nbdcopy, zstd).
//
//   full backup of data written through NBD, restore, qemu-img compare, digest equality, the
//     objects s3cmd lists (and every chunk decompressed by zstd equals the volume's bytes)
//   incremental after writing 1 %: bytes sent <= 1.1 x the changed chunks + the manifest; a
//     second volume with the same data uploads nothing
//   kill -9 during an upload: no manifest; the next backup completes, reusing uploaded chunks
//   a damaged or missing chunk: verify and restore fail naming it, no volume is left
//   unreachable endpoint, missing bucket, 403: one clear line each, no secret anywhere
//   garbage collection against backups: a sweep defers to a running backup (and a backup waits
//     for a running sweep), a concurrent backup + delete keeps every referenced chunk, and a
//     sweep with nothing running deletes every unreferenced chunk
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "tests/e2e/s3_server.h"
#include "tests/e2e/snapshot_e2e_util.h"
#include "tests/e2e/tls_setup.h"

namespace shale::e2e {
namespace {

constexpr char kBucket[] = "shale-backups";
constexpr uint64_t kChunk = 4 * kMiB;

struct ManifestChunk {
  uint64_t index;
  std::string hash;
  uint64_t stored;
};

class BackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (S3rverBinary().empty()) {
      GTEST_SKIP() << "s3rver is not installed (scripts/deps installs it into tests/tools with "
                      "npm)";
    }
    SHALE_REQUIRE_TOOL(s3cmd, "s3cmd", "s3cmd");
    SHALE_REQUIRE_TOOL(qemu_io, "qemu-io", "qemu-utils");
    SHALE_REQUIRE_TOOL(nbdcopy, "nbdcopy", "libnbd-bin");
    qemu_io_ = qemu_io;
    nbdcopy_ = nbdcopy;
    ASSERT_TRUE(s3_.Start(h_.root(), {kBucket}));
    setenv("AWS_ACCESS_KEY_ID", kS3AccessKey, 1);
    setenv("AWS_SECRET_ACCESS_KEY", kS3SecretKey, 1);
    ASSERT_TRUE(h_.StartDaemon());
  }

  std::string Place(const std::string& prefix) {
    return std::string("s3://") + kBucket + "/" + prefix;
  }

  // `shale ARGS --endpoint S3 -o json`, asserting success.
  nlohmann::json Backup(std::vector<std::string> args) {
    args.insert(args.end(), {"--endpoint", s3_.url()});
    return ShaleJson(h_, args);
  }
  CommandResult BackupRaw(std::vector<std::string> args) {
    args.insert(args.end(), {"--endpoint", s3_.url()});
    return h_.Shale(args);
  }

  void Ok(const std::vector<std::string>& args) {
    CommandResult r = h_.Shale(args);
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }

  // Writes `len` bytes of random data at `offset` of export `name` (nbdcopy from a file).
  void WriteRandom(const std::string& name, uint64_t offset, uint64_t len, int seed) {
    const std::string file = h_.root() + "/rand-" + std::to_string(seed);
    {
      std::ofstream out(file, std::ios::binary);
      std::mt19937_64 rng(static_cast<uint64_t>(seed));
      std::vector<uint64_t> buf(len / 8);
      for (uint64_t& w : buf) w = rng();
      out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(len));
    }
    // qemu-io writes the file's bytes at the offset: "write -s FILE OFFSET LEN".
    CommandResult r = QemuIo(
        qemu_io_, h_.NbdUri(name),
        {"write -s " + file + " " + std::to_string(offset) + " " + std::to_string(len), "flush"});
    ASSERT_TRUE(QemuOk(r)) << r.Describe();
    unlink(file.c_str());
  }

  void Snapshot(const std::string& volume, const std::string& snap) {
    Ok({"snapshot", "create", volume, snap, "--wait-digest", "--label", "source=e2e"});
  }

  std::string Digest(const std::string& ref) { return SnapshotDigest(h_, ref); }

  // The chunk lines of a backup's manifest, fetched with s3cmd.
  std::vector<ManifestChunk> ManifestChunks(const std::string& prefix, const std::string& id,
                                            uint64_t* manifest_bytes = nullptr) {
    const std::string local = h_.root() + "/manifest-" + id;
    CommandResult r =
        s3_.S3cmd({"get", "--force", Place(prefix) + "/backups/" + id + ".manifest", local});
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    std::string text = ReadTextFile(local);
    if (manifest_bytes != nullptr) *manifest_bytes = text.size();
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // the JSON header
    EXPECT_TRUE(nlohmann::json::parse(line, nullptr, false).is_object()) << line;
    std::vector<ManifestChunk> out;
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      ManifestChunk c;
      fields >> c.index >> c.hash >> c.stored;
      out.push_back(c);
    }
    return out;
  }

  std::set<std::string> ChunkObjects(const std::string& prefix) {
    std::set<std::string> out;
    for (const std::string& k : s3_.Keys(kBucket, prefix + "/chunks/")) {
      out.insert(k.substr(k.rfind('/') + 1));
    }
    return out;
  }

  Harness h_;
  S3Server s3_;
  std::string qemu_io_, nbdcopy_;
};

TEST_F(BackupTest, FullBackupRestoresTheSameBytesAndDigest) {
  SHALE_REQUIRE_TOOL(qemu_img, "qemu-img", "qemu-utils");
  SHALE_REQUIRE_TOOL(zstd, "zstd", "zstd");
  Ok({"volume", "create", "data", "--size", "64M"});
  // Data in a few places, holes elsewhere, and a zero-filled written range.
  WriteRandom("data", 0, 3 * kMiB, 1);
  WriteRandom("data", 17 * kMiB + 4096, 2 * kMiB, 2);
  CommandResult w =
      QemuIo(qemu_io_, h_.NbdUri("data"), {"write -P 0xab 40M 1M", "write -z 48M 4M", "flush"});
  ASSERT_TRUE(QemuOk(w)) << w.Describe();
  Snapshot("data", "v1");
  const std::string digest = Digest("data@v1");
  ASSERT_EQ(digest.size(), 32u);

  nlohmann::json b = Backup({"backup", "create", "data@v1", "--to", Place("nb")});
  ASSERT_TRUE(b.is_object());
  const std::string id = b["id"];
  EXPECT_EQ(b["digest"], digest);
  EXPECT_EQ(b["base"], "");
  EXPECT_EQ(b["size"], 64 * kMiB);
  EXPECT_GT(b["uploaded_chunks"].get<uint64_t>(), 0u);

  // The independent client sees the manifest and exactly the chunks it names.
  std::vector<std::string> manifests = s3_.Keys(kBucket, "nb/backups/");
  ASSERT_EQ(manifests.size(), 1u);
  EXPECT_EQ(manifests[0], "nb/backups/" + id + ".manifest");
  std::vector<ManifestChunk> chunks = ManifestChunks("nb", id);
  EXPECT_EQ(chunks.size(), b["chunk_count"].get<size_t>());
  // Chunks 0 (data), 4 (17M), 10 (40M); 12 (48M, written zeros) and holes are not stored.
  std::set<uint64_t> indices;
  for (const ManifestChunk& c : chunks) indices.insert(c.index);
  EXPECT_EQ(indices, (std::set<uint64_t>{0, 4, 10})) << "chunk indices";
  std::set<std::string> names;
  for (const ManifestChunk& c : chunks) names.insert(c.hash);
  EXPECT_EQ(ChunkObjects("nb"), names);

  // Every chunk, decompressed by zstd, is the snapshot's bytes at its place.
  const std::string image = h_.root() + "/snap.raw";
  CommandResult copy = Tool({nbdcopy_, h_.NbdUri("data@v1"), image});
  ASSERT_EQ(copy.exit_code, 0) << copy.Describe();
  const std::string raw = ReadTextFile(image);
  ASSERT_EQ(raw.size(), 64 * kMiB);
  for (const ManifestChunk& c : chunks) {
    const std::string obj = h_.root() + "/chunk";
    ASSERT_EQ(s3_.S3cmd({"get", "--force", Place("nb") + "/chunks/" + c.hash, obj}).exit_code, 0);
    CommandResult d = Tool({zstd, "-d", "-f", "-q", obj, "-o", obj + ".raw"});
    ASSERT_EQ(d.exit_code, 0) << d.Describe();
    EXPECT_EQ(ReadTextFile(obj + ".raw"), raw.substr(c.index * kChunk, kChunk))
        << "chunk " << c.index;
  }

  // list -o json: id, volume, snapshot, time, size, digest.
  nlohmann::json list = Backup({"backup", "list", Place("nb")});
  ASSERT_EQ(list["backups"].size(), 1u);
  const nlohmann::json& e = list["backups"][0];
  EXPECT_EQ(e["id"], id);
  EXPECT_EQ(e["volume"], "data");
  EXPECT_EQ(e["snapshot"], "v1");
  EXPECT_TRUE(e["time"].is_string() && e["time"].get<std::string>().ends_with("Z")) << e;
  EXPECT_EQ(e["size"], 64 * kMiB);
  EXPECT_EQ(e["digest"], digest);
  EXPECT_EQ(e["labels"]["source"], "e2e");
  nlohmann::json shown = Backup({"backup", "show", Place("nb") + "/" + id});
  EXPECT_EQ(shown["chunk_count"], chunks.size());
  nlohmann::json verified = Backup({"backup", "verify", Place("nb") + "/" + id});
  EXPECT_EQ(verified["digest"], digest);

  // Restore into a new volume: the same bytes (qemu-img compare), the same digest, holes kept.
  nlohmann::json r = Backup({"backup", "restore", Place("nb") + "/" + id, "copy"});
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["digest"], digest);
  EXPECT_EQ(r["size_bytes"], 64 * kMiB);
  CommandResult cmp = Tool(
      {qemu_img, "compare", "-f", "raw", "-F", "raw", h_.NbdUri("data@v1"), h_.NbdUri("copy")});
  EXPECT_EQ(cmp.exit_code, 0) << cmp.Describe();
  Snapshot("copy", "check");
  EXPECT_EQ(Digest("copy@check"), digest);
  nlohmann::json vol = ShaleJson(h_, {"volume", "show", "copy"});
  EXPECT_LT(vol["allocated_bytes"].get<uint64_t>(), 8 * kMiB) << "restore wrote holes: " << vol;
  EXPECT_EQ(vol["labels"]["backup.shale.io/digest"], digest);

  // Restoring onto an existing name is refused before anything is written.
  CommandResult again = BackupRaw({"backup", "restore", Place("nb") + "/" + id, "copy"});
  ExpectOneLineError(again, "already exists");
}

TEST_F(BackupTest, IncrementalSendsOnlyChangedChunksAndDuplicatesSendNothing) {
  Ok({"volume", "create", "v", "--size", "128M"});
  WriteRandom("v", 0, 128 * kMiB, 10);
  Snapshot("v", "s1");
  nlohmann::json full = Backup({"backup", "create", "v@s1", "--to", Place("p")});
  ASSERT_TRUE(full.is_object());
  EXPECT_EQ(full["uploaded_chunks"], 32u);

  // 1 % of the volume: 5 writes of 256 KiB, each in another chunk.
  const std::vector<uint64_t> touched = {1, 7, 13, 20, 31};
  for (size_t i = 0; i < touched.size(); ++i) {
    WriteRandom("v", touched[i] * kChunk + 512 * 1024, 256 * 1024, 100 + static_cast<int>(i));
  }
  Snapshot("v", "s2");
  nlohmann::json inc = Backup({"backup", "create", "v@s2", "--to", Place("p")});
  ASSERT_TRUE(inc.is_object());
  EXPECT_EQ(inc["base"], full["id"]);
  EXPECT_EQ(inc["read_bytes"], touched.size() * kChunk) << "read only the changed chunks";
  EXPECT_EQ(inc["uploaded_chunks"], touched.size());

  // Bytes sent (chunks, manifest, lock) against the changed chunks' compressed size.
  uint64_t manifest_bytes = 0;
  std::vector<ManifestChunk> before = ManifestChunks("p", full["id"]);
  std::vector<ManifestChunk> after = ManifestChunks("p", inc["id"], &manifest_bytes);
  ASSERT_EQ(after.size(), 32u);
  uint64_t changed = 0;
  std::set<uint64_t> changed_idx;
  for (size_t i = 0; i < after.size(); ++i) {
    if (after[i].hash != before[i].hash) {
      changed += after[i].stored;
      changed_idx.insert(after[i].index);
    }
  }
  EXPECT_EQ(changed_idx, std::set<uint64_t>(touched.begin(), touched.end()));
  const uint64_t sent = inc["bytes_sent"];
  EXPECT_LE(static_cast<double>(sent), 1.1 * static_cast<double>(changed) + manifest_bytes)
      << "sent " << sent << ", changed chunks " << changed << ", manifest " << manifest_bytes;
  EXPECT_EQ(Backup({"backup", "verify", Place("p") + "/" + inc["id"].get<std::string>()})["digest"],
            Digest("v@s2"));

  // A second volume holding the same data uploads no chunk.
  Ok({"volume", "create", "w", "--size", "128M"});
  CommandResult copy = Tool({nbdcopy_, h_.NbdUri("v@s2"), h_.NbdUri("w")});
  ASSERT_EQ(copy.exit_code, 0) << copy.Describe();
  Snapshot("w", "s1");
  nlohmann::json dup = Backup({"backup", "create", "w@s1", "--to", Place("p")});
  ASSERT_TRUE(dup.is_object());
  EXPECT_EQ(dup["base"], "");
  EXPECT_EQ(dup["uploaded_chunks"], 0u);
  EXPECT_EQ(dup["uploaded_bytes"], 0u);
  EXPECT_EQ(dup["reused_chunks"], 32u);
  EXPECT_EQ(dup["digest"], Digest("v@s2"));

  // Deleting the base snapshot makes the next backup full (its chunks still deduplicate).
  Ok({"snapshot", "delete", "v@s1"});
  Ok({"snapshot", "delete", "v@s2"});
  Snapshot("v", "s3");
  nlohmann::json after_delete = Backup({"backup", "create", "v@s3", "--to", Place("p")});
  EXPECT_EQ(after_delete["base"], "");
  EXPECT_NE(after_delete["full_reason"].get<std::string>().find("no longer here"),
            std::string::npos)
      << after_delete;
  EXPECT_EQ(after_delete["uploaded_chunks"], 0u);
}

TEST_F(BackupTest, KillNineDuringUploadLeavesNoManifestAndChunksAreReused) {
  h_.StopDaemon(SIGTERM);
  ASSERT_TRUE(h_.StartDaemon({"--backup-parallel", "1"}));
  Ok({"volume", "create", "big", "--size", "256M"});
  WriteRandom("big", 0, 256 * kMiB, 20);
  Snapshot("big", "s");
  std::vector<std::string> argv = {ShaleBinary(), "--endpoint", h_.endpoint(), "backup",
                                   "create",      "big@s",      "--to",        Place("k"),
                                   "--endpoint",  s3_.url()};
  CommandResult interrupted;
  std::thread op([&] { interrupted = RunProcess(argv, {.timeout = std::chrono::seconds(120)}); });
  // Kill once a few chunks are in the bucket and the backup is still going.
  const bool some =
      WaitFor([&] { return ChunkObjects("k").size() >= 3; }, std::chrono::seconds(90));
  h_.KillDaemon();
  op.join();
  ASSERT_TRUE(some) << "no chunk reached the bucket: " << interrupted.Describe();
  EXPECT_NE(interrupted.exit_code, 0) << "the backup finished before the kill";
  const size_t uploaded_before = ChunkObjects("k").size();
  EXPECT_LT(uploaded_before, 64u);
  EXPECT_TRUE(s3_.Keys(kBucket, "k/backups/").empty()) << "a manifest exists after the kill";

  ASSERT_TRUE(h_.StartDaemon());
  nlohmann::json none = Backup({"backup", "list", Place("k")});
  EXPECT_TRUE(none["backups"].empty()) << none;
  nlohmann::json b = Backup({"backup", "create", "big@s", "--to", Place("k")});
  ASSERT_TRUE(b.is_object());
  // Every complete chunk is reused; the one upload in flight at the kill (--backup-parallel 1)
  // may have left a truncated object, which is replaced.
  EXPECT_GE(b["reused_chunks"].get<uint64_t>() + 1, uploaded_before);
  EXPECT_GT(b["reused_chunks"].get<uint64_t>(), 0u);
  EXPECT_EQ(b["uploaded_chunks"].get<uint64_t>() + b["reused_chunks"].get<uint64_t>(), 64u);
  nlohmann::json v = Backup({"backup", "verify", Place("k") + "/" + b["id"].get<std::string>()});
  EXPECT_EQ(v["digest"], Digest("big@s"));
}

TEST_F(BackupTest, DamagedOrMissingChunkFailsVerifyAndRestoreNamingIt) {
  Ok({"volume", "create", "d", "--size", "32M"});
  WriteRandom("d", 0, 12 * kMiB, 30);
  Snapshot("d", "s");
  nlohmann::json b = Backup({"backup", "create", "d@s", "--to", Place("c")});
  const std::string id = b["id"];
  const std::string url = Place("c") + "/" + id;
  std::vector<ManifestChunk> chunks = ManifestChunks("c", id);
  ASSERT_EQ(chunks.size(), 3u);

  // Flip a byte in the middle of chunk 1's object.
  const std::string victim = chunks[1].hash;
  const std::string obj = h_.root() + "/victim";
  ASSERT_EQ(s3_.S3cmd({"get", "--force", Place("c") + "/chunks/" + victim, obj}).exit_code, 0);
  std::string bytes = ReadTextFile(obj);
  bytes[bytes.size() / 2] ^= 0x01;
  std::ofstream(obj, std::ios::binary | std::ios::trunc) << bytes;
  ASSERT_EQ(s3_.S3cmd({"put", obj, Place("c") + "/chunks/" + victim}).exit_code, 0);

  CommandResult verify = BackupRaw({"backup", "verify", url});
  ExpectOneLineError(verify, "chunks/" + victim);
  EXPECT_NE(verify.err.find("corrupt"), std::string::npos) << verify.err;
  CommandResult restore = BackupRaw({"backup", "restore", url, "r"});
  ExpectOneLineError(restore, "chunks/" + victim);
  EXPECT_NE(restore.err.find("was deleted"), std::string::npos) << restore.err;
  EXPECT_NE(h_.Shale({"volume", "show", "r"}).exit_code, 0) << "a half-restored volume is left";

  // A missing chunk likewise.
  ASSERT_EQ(s3_.S3cmd({"del", Place("c") + "/chunks/" + victim}).exit_code, 0);
  CommandResult missing = BackupRaw({"backup", "restore", url, "r"});
  ExpectOneLineError(missing, "chunks/" + victim);
  EXPECT_NE(missing.err.find("missing"), std::string::npos) << missing.err;
  EXPECT_NE(h_.Shale({"volume", "show", "r"}).exit_code, 0);
  ExpectOneLineError(BackupRaw({"backup", "verify", url}), "missing");
  nlohmann::json vols = ShaleJson(h_, {"volume", "list"});
  EXPECT_EQ(vols["volumes"].size(), 1u) << vols;
}

TEST_F(BackupTest, UnreachableMissingBucketAndForbiddenAreOneClearLine) {
  Ok({"volume", "create", "e", "--size", "8M"});
  Snapshot("e", "s");
  CommandResult unreachable =
      h_.Shale({"backup", "create", "e@s", "--to", Place("x"), "--endpoint", "http://127.0.0.1:1"});
  ExpectOneLineError(unreachable, "cannot reach S3 endpoint http://127.0.0.1:1");
  CommandResult nobucket = BackupRaw({"backup", "create", "e@s", "--to", "s3://no-such-bucket/x"});
  ExpectOneLineError(nobucket, "bucket 'no-such-bucket' does not exist");
  ExpectOneLineError(BackupRaw({"backup", "list", "s3://no-such-bucket/x"}), "does not exist");
  ExpectOneLineError(BackupRaw({"backup", "list", "http://x"}), "not an S3 location");
  ExpectOneLineError(BackupRaw({"backup", "restore", Place("x"), "v"}), "not a backup id");

  // 403: s3rver refuses an access key it does not know.
  const std::string secret = "wrong-secret-must-not-leak";
  h_.StopDaemon(SIGTERM);
  setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY", 1);
  setenv("AWS_SECRET_ACCESS_KEY", secret.c_str(), 1);
  ASSERT_TRUE(h_.StartDaemon());
  CommandResult forbidden = BackupRaw({"backup", "create", "e@s", "--to", Place("x")});
  ExpectOneLineError(forbidden, "403 InvalidAccessKeyId");
  ExpectOneLineError(BackupRaw({"backup", "list", Place("x")}), "403");
  EXPECT_EQ(forbidden.err.find(secret), std::string::npos);
  EXPECT_EQ(h_.DaemonLog().find(secret), std::string::npos) << "the secret is in shaled's log";

  // No credentials at all.
  h_.StopDaemon(SIGTERM);
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SECRET_ACCESS_KEY");
  ASSERT_TRUE(h_.StartDaemon());
  ExpectOneLineError(BackupRaw({"backup", "list", Place("x")}), "no S3 credentials");

  // A credentials file readable by others is refused at start, naming the fix.
  h_.StopDaemon(SIGTERM);
  const std::string creds = h_.root() + "/creds";
  std::ofstream(creds) << "[default]\naws_access_key_id = " << kS3AccessKey
                       << "\naws_secret_access_key = " << kS3SecretKey << "\n";
  chmod(creds.c_str(), 0644);
  CommandResult refused =
      RunProcess({ShaledBinary(), "--data-dir", h_.data_dir(), "--backup-credentials-file", creds},
                 {.timeout = std::chrono::seconds(60)});
  EXPECT_NE(refused.exit_code, 0) << refused.Describe();
  // Its log lines come first; the error is one line of its own.
  std::vector<std::string> errors;
  for (const std::string& line : refused.ErrLines()) {
    if (line.starts_with("shaled: ")) errors.push_back(line);
  }
  ASSERT_EQ(errors.size(), 1u) << refused.Describe();
  EXPECT_NE(errors[0].find("chmod 600 " + creds), std::string::npos) << errors[0];
  chmod(creds.c_str(), 0600);
  ASSERT_TRUE(h_.StartDaemon({"--backup-credentials-file", creds, "--backup-endpoint", s3_.url()}));
  // With --backup-endpoint the command needs no --endpoint.
  CommandResult listed = h_.Shale({"backup", "list", Place("x"), "-o", "json"});
  EXPECT_EQ(listed.exit_code, 0) << listed.Describe();
}

// An https endpoint is verified: against the CA in --backup-ca-file the backup goes through and
// verifies; without it (the system CAs do not know this one) every command is one line naming
// the certificate problem and the fix, and nothing is uploaded.
TEST_F(BackupTest, HttpsEndpointIsVerifiedAgainstTheCaFile) {
  if (!tls::testing::HaveTools()) GTEST_SKIP() << "certtool is missing (Debian gnutls-bin)";
  TlsMaterial tls;
  ASSERT_TRUE(MakeTlsMaterial(h_.root(), &tls));
  S3Server https;
  ASSERT_TRUE(https.Start(h_.root() + "/https", {kBucket}, tls.server_dir() + "/server-cert.pem",
                          tls.server_dir() + "/server-key.pem"));
  ASSERT_EQ(https.url().rfind("https://", 0), 0u) << https.url();
  Ok({"volume", "create", "t", "--size", "16M"});
  WriteRandom("t", 0, 8 * kMiB, 77);
  Snapshot("t", "s");

  // The daemon of the fixture knows only the system CAs.
  CommandResult untrusted =
      h_.Shale({"backup", "create", "t@s", "--to", Place("tls"), "--endpoint", https.url()});
  ExpectOneLineError(untrusted, "--backup-ca-file");
  EXPECT_NE(untrusted.err.find("certificate"), std::string::npos) << untrusted.Describe();
  ExpectOneLineError(h_.Shale({"backup", "list", Place("tls"), "--endpoint", https.url()}),
                     "--backup-ca-file");

  ASSERT_EQ(h_.StopDaemon(SIGTERM), 0);
  ASSERT_TRUE(h_.StartDaemon({"--backup-ca-file", tls.server_dir() + "/ca-cert.pem"}));
  nlohmann::json made =
      ShaleJson(h_, {"backup", "create", "t@s", "--to", Place("tls"), "--endpoint", https.url()});
  const std::string id = made["id"].get<std::string>();
  EXPECT_EQ(made["digest"], Digest("t@s"));
  nlohmann::json listed =
      ShaleJson(h_, {"backup", "list", Place("tls"), "--endpoint", https.url()});
  ASSERT_EQ(listed["backups"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["backups"][0]["id"], id);
  CommandResult verified =
      h_.Shale({"backup", "verify", Place("tls") + "/" + id, "--endpoint", https.url()});
  EXPECT_EQ(verified.exit_code, 0) << verified.Describe();
}

TEST_F(BackupTest, GarbageCollectionNeverRemovesWhatABackupNeeds) {
  Ok({"volume", "create", "v", "--size", "96M"});
  WriteRandom("v", 0, 96 * kMiB, 40);
  Snapshot("v", "s1");
  nlohmann::json b1 = Backup({"backup", "create", "v@s1", "--to", Place("g")});
  const std::string id1 = b1["id"];
  const std::set<std::string> chunks1 = ChunkObjects("g");
  ASSERT_EQ(chunks1.size(), 24u);

  // A running backup's lock (fresh): the sweep of a delete defers, the chunks stay.
  const std::string lock = h_.root() + "/lock";
  std::ofstream(lock) << "{}";
  ASSERT_EQ(s3_.S3cmd({"put", lock, Place("g") + "/locks/backup-other.lock"}).exit_code, 0);
  nlohmann::json del = Backup({"backup", "delete", Place("g") + "/" + id1});
  EXPECT_EQ(del["deleted"], nlohmann::json::array({id1}));
  EXPECT_TRUE(del["sweep_deferred"].get<bool>()) << del;
  EXPECT_EQ(ChunkObjects("g"), chunks1);
  ASSERT_EQ(s3_.S3cmd({"del", Place("g") + "/locks/backup-other.lock"}).exit_code, 0);

  // A running sweep's lock: a backup waits for it (no manifest meanwhile), then completes.
  ASSERT_EQ(s3_.S3cmd({"put", lock, Place("g") + "/locks/gc-other.lock"}).exit_code, 0);
  CommandResult waited;
  std::thread backup([&] {
    waited = RunProcess({ShaleBinary(), "--endpoint", h_.endpoint(), "backup", "create", "v@s1",
                         "--to", Place("g"), "--endpoint", s3_.url(), "-o", "json"},
                        {.timeout = std::chrono::seconds(120)});
  });
  // The backup saw the sweep's lock and stepped back (its log says so): no manifest meanwhile.
  const bool waiting = WaitFor(
      [&] { return h_.DaemonLog().find("waiting for a sweep to finish") != std::string::npos; });
  EXPECT_TRUE(waiting) << h_.DaemonLog();
  EXPECT_TRUE(s3_.Keys(kBucket, "g/backups/").empty()) << "the backup did not wait";
  ASSERT_EQ(s3_.S3cmd({"del", Place("g") + "/locks/gc-other.lock"}).exit_code, 0);
  backup.join();
  ASSERT_EQ(waited.exit_code, 0) << waited.Describe();
  const std::string id2 = waited.Json()["id"];
  EXPECT_EQ(waited.Json()["uploaded_chunks"], 0u) << "the deferred chunks were reused";

  // The real race: a backup of the same data in flight while the only other backup is deleted.
  Ok({"volume", "create", "w", "--size", "96M"});
  ASSERT_EQ(Tool({nbdcopy_, h_.NbdUri("v@s1"), h_.NbdUri("w")}).exit_code, 0);
  Snapshot("w", "s1");
  CommandResult concurrent;
  std::thread running([&] {
    concurrent = RunProcess({ShaleBinary(), "--endpoint", h_.endpoint(), "backup", "create", "w@s1",
                             "--to", Place("g"), "--endpoint", s3_.url(), "-o", "json"},
                            {.timeout = std::chrono::seconds(120)});
  });
  WaitFor([&] {
    for (const std::string& k : s3_.Keys(kBucket, "g/locks/")) {
      if (k.find("locks/backup-w.") != std::string::npos) return true;
    }
    return false;
  });
  nlohmann::json del2 = Backup({"backup", "delete", Place("g") + "/" + id2});
  running.join();
  ASSERT_EQ(concurrent.exit_code, 0) << concurrent.Describe();
  const std::string id3 = concurrent.Json()["id"];
  std::set<std::string> referenced;
  for (const ManifestChunk& c : ManifestChunks("g", id3)) referenced.insert(c.hash);
  const std::set<std::string> present = ChunkObjects("g");
  for (const std::string& h : referenced) {
    EXPECT_TRUE(present.contains(h)) << "chunk " << h << " of live backup " << id3 << " was swept";
  }
  EXPECT_EQ(Backup({"backup", "verify", Place("g") + "/" + id3})["digest"], Digest("w@s1"));

  // Nothing running: prune sweeps every chunk no manifest references.
  Ok({"volume", "create", "x", "--size", "16M"});
  WriteRandom("x", 0, 8 * kMiB, 41);
  Snapshot("x", "s1");
  nlohmann::json bx = Backup({"backup", "create", "x@s1", "--to", Place("g")});
  Ok({"snapshot", "delete", "x@s1"});
  WriteRandom("x", 0, 8 * kMiB, 42);
  Snapshot("x", "s2");
  nlohmann::json bx2 = Backup({"backup", "create", "x@s2", "--to", Place("g")});
  nlohmann::json pruned = Backup({"backup", "prune", Place("g"), "--keep", "1"});
  EXPECT_EQ(pruned["deleted"], nlohmann::json::array({bx["id"]}));
  EXPECT_FALSE(pruned["sweep_deferred"].get<bool>()) << pruned;
  EXPECT_EQ(pruned["chunks_deleted"], 2u);
  std::set<std::string> live;
  const nlohmann::json remaining = Backup({"backup", "list", Place("g")});
  ASSERT_EQ(remaining["backups"].size(), 2u) << remaining;
  for (const nlohmann::json& m : remaining["backups"]) {
    for (const ManifestChunk& c : ManifestChunks("g", m["id"])) live.insert(c.hash);
  }
  EXPECT_EQ(ChunkObjects("g"), live);
  ExpectOneLineError(BackupRaw({"backup", "prune", Place("g"), "--keep", "0"}), "--keep");
}

}  // namespace
}  // namespace shale::e2e
