// What a CSI volume is made of, from this driver's side: StorageClass parameters, the
// attributes core keeps for them, the volume_context handed to the node calls, and the
// volume capabilities the driver supports. Shared by the controller and node services.
//
// StorageClass parameters (docs/CSI.md has the long version):
//   image      path of an image file under an --import-root: raw or ext4 (sparse-aware),
//              qcow2, gzip/xz/zstd of those, detected as for url (core/provision.h)
//   imageDir   a directory under an --import-root, built into an ext4 image
//   url        an http:// or https:// URL of an image (raw, ext4, gzip/xz/zstd, qcow2);
//              imported once per node and cloned (csi/node/image_importer.h, docs/IMAGES.md)
//   sha256     the expected digest of the bytes at `url` ("sha256:<hex>" or "<hex>")
//   blockSize  the volume's block size ("4096", "64K"; core/provision.h ParseBlockSize);
//              blank and image volumes only
//   fsType     filesystem for Mount access: "ext4" (the default and the only one)
//   exposure   how the node serves the volume: the block device provider's name (the
//              default: a kernel block device, mounted or bind-mounted for pods) or
//              "vhost-user-blk" (a vhost-user-blk socket for microVMs, plus runtime
//              descriptors at publish; docs/EXPOSURE.md)
// Keys starting with "csi.storage.k8s.io/" (added by the sidecars) are ignored; any
// other key is INVALID_ARGUMENT naming it.
//
// Thread-safety: pure functions.
#pragma once

#include <grpcpp/support/status.h>

#include <cstdint>
#include <map>
#include <string>

#include "core/store.h"
#include "csi.pb.h"

namespace stellarium::csi {

// Parameter keys (StorageClass), also stored as core attributes of the volume:
// persisted in the store's catalog; never rename.
inline constexpr char kParamImage[] = "image";
inline constexpr char kParamImageDir[] = "imageDir";
inline constexpr char kParamUrl[] = "url";
inline constexpr char kParamSha256[] = "sha256";
inline constexpr char kParamBlockSize[] = "blockSize";
inline constexpr char kParamFsType[] = "fsType";
inline constexpr char kParamExposure[] = "exposure";
inline constexpr char kReservedPrefix[] = "csi.storage.k8s.io/";

// volume_context keys (immutable per volume; derived from the catalog).
inline constexpr char kCtxFsType[] = "stellarium.io/fs-type";
inline constexpr char kCtxExposure[] = "stellarium.io/exposure";
inline constexpr char kCtxBlockSize[] = "stellarium.io/block-size";
inline constexpr char kCtxSourceKind[] = "stellarium.io/source-kind";
inline constexpr char kCtxNode[] = "stellarium.io/node";

// The `exposure` value that serves a volume to microVMs over vhost-user-blk instead of
// as a kernel block device. Persisted as a volume attribute; never rename.
inline constexpr char kExposureVhostUserBlk[] = "vhost-user-blk";

inline constexpr char kDefaultFsType[] = "ext4";

struct VolumeParams {
  std::string image;       // as given (resolved later against the import roots)
  std::string image_dir;
  std::string url;          // http(s) image URL
  std::string sha256;       // lowercase hex of the expected digest; "" = none
  uint32_t block_size = 0;  // 0: store default
  std::string fs_type = kDefaultFsType;
  std::string exposure;     // normalized to the provider's name

  // What core stores with the volume and compares on an idempotent re-create.
  Attributes ToAttributes() const;
};

// Parses and checks StorageClass parameters. `exposure_name` is the node's provider.
Result<VolumeParams> ParseVolumeParameters(const google::protobuf::Map<std::string, std::string>& params,
                                           const std::string& exposure_name);
// For snapshot parameters: only reserved keys are accepted.
Status CheckNoParameters(const google::protobuf::Map<std::string, std::string>& params,
                         const std::string& what);

// OK when the driver can serve the capability; INVALID_ARGUMENT explaining otherwise.
grpc::Status CheckCapability(const ::csi::v1::VolumeCapability& cap);
bool IsReadOnlyMode(::csi::v1::VolumeCapability::AccessMode::Mode mode);
// At most one read-write publish at a time (SINGLE_NODE_WRITER, SINGLE_NODE_SINGLE_WRITER).
bool IsSingleWriterMode(::csi::v1::VolumeCapability::AccessMode::Mode mode);

// The CSI view of a volume in the store.
::csi::v1::Volume ToCsiVolume(const VolumeInfo& info, const std::string& node_id,
                              const std::string& default_exposure);
std::map<std::string, std::string> VolumeContext(const VolumeInfo& info, const std::string& node_id,
                                                 const std::string& default_exposure);
::csi::v1::Snapshot ToCsiSnapshot(const SnapshotInfo& info);

// CSI names (CreateVolume, CreateSnapshot): the rule of the CLI's names
// (core/provision.h ValidateName): at most kMaxNameBytes bytes, no control character (a
// stricter rule than the spec's banned characters: no tab or line break either), no '/',
// not "." or "..". The driver's own image anchors, whose names hold '/', never come
// through a request.
grpc::Status CheckName(const std::string& name, const std::string& what);

// Rounds up to a multiple of `unit` (a power of two).
uint64_t RoundUp(uint64_t value, uint64_t unit);

}  // namespace stellarium::csi
