#include "tests/node/node_fixture.h"

#include <openssl/evp.h>

#include <fstream>

#include "core/image_source.h"

namespace stellarium::testing {

std::string Sha256Hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

ImportedExt4 ImportKnownExt4(Store& store, const std::string& dir, const std::string& name,
                             uint64_t size_mib) {
  ImportedExt4 r;
  std::string tree = dir + "/tree-" + name;
  RunCommand({"mkdir", "-p", tree});
  std::vector<char> bytes = PatternBytes(300 * 1024, 4242);
  r.known_name = "known.bin";
  r.known_content.assign(bytes.begin(), bytes.end());
  std::ofstream(tree + "/" + r.known_name, std::ios::binary) << r.known_content;
  r.known_sha256 = Sha256Hex(r.known_content);
  r.image_path = dir + "/" + name + ".ext4";
  CommandResult mk = RunCommand({"mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, r.image_path,
                                 std::to_string(size_mib) + "M"});
  EXPECT_EQ(mk.exit_code, 0) << mk.output;
  auto src = OpenFileImageSource(r.image_path);
  EXPECT_TRUE(src.ok()) << src.status().ToString();
  if (!src.ok()) return r;
  ImportOptions opts;
  opts.volume.name = name;
  auto imported = store.ImportImage(**src, opts);
  EXPECT_TRUE(imported.ok()) << imported.status().ToString();
  if (imported.ok()) r.volume = imported->volume;
  return r;
}

}  // namespace stellarium::testing
