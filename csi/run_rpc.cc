// The process-wide RpcObserver: see run_rpc.h.
#include "csi/run_rpc.h"

#include <atomic>

namespace stellarium::csi {
namespace {

std::atomic<RpcObserver*> g_observer{nullptr};

}  // namespace

void SetRpcObserver(RpcObserver* observer) { g_observer.store(observer); }
RpcObserver* GetRpcObserver() { return g_observer.load(); }

}  // namespace stellarium::csi
