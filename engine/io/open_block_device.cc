// OpenBlockDevice: the backend switch (declared in block_device.h).
#include <memory>

#include "engine/io/aio_device.h"
#include "engine/io/block_device.h"
#include "engine/io/uring_device.h"

namespace shale {

Result<std::unique_ptr<BlockDevice>> OpenBlockDevice(const std::string& path,
                                                     const DeviceOptions& options) {
  switch (options.backend) {
    case IoBackend::kIoUring: {
      SHALE_ASSIGN_OR_RETURN(std::unique_ptr<UringDevice> dev, UringDevice::Open(path, options));
      return std::unique_ptr<BlockDevice>(std::move(dev));
    }
    case IoBackend::kLibaio: {
      SHALE_ASSIGN_OR_RETURN(std::unique_ptr<AioDevice> dev, AioDevice::Open(path, options));
      return std::unique_ptr<BlockDevice>(std::move(dev));
    }
  }
  return Status::InvalidArgument("unknown I/O backend");
}

}  // namespace shale
