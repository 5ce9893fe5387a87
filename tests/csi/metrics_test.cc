// The Prometheus endpoint: scraped over HTTP after a few RPCs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/csi/csi_fixture.h"

namespace stellarium::csi::testing {
namespace {

// GET http://127.0.0.1:port/metrics, the whole response.
std::string Scrape(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)::write(fd, request.data(), request.size());
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) response.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return response;
}

class MetricsTest : public CsiDriverTest {
 protected:
  void SetUp() override {
    metrics_address_ = "127.0.0.1:0";  // any free port on loopback
    CsiDriverTest::SetUp();
  }
};

TEST_F(MetricsTest, CountsRpcsByMethodAndCodeAndReportsTheStore) {
  ASSERT_GT(server_->metrics_port(), 0);
  std::string a = MustCreateVolume("m-a");
  MustCreateVolume("m-a");
  MustCreateSnapshot("m-snap", a);
  EXPECT_EQ(CreateVolume(VolumeRequest("")).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  std::string text = Scrape(server_->metrics_port());
  ASSERT_NE(text.find("200 OK"), std::string::npos) << text;
  EXPECT_NE(text.find(R"(stellarium_csi_rpc_total{code="OK",method="CreateVolume"} 2)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(stellarium_csi_rpc_total{code="INVALID_ARGUMENT",method="CreateVolume"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(stellarium_csi_rpc_total{code="OK",method="CreateSnapshot"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(stellarium_csi_rpc_duration_seconds_count{code="OK",method="CreateVolume"} 2)"),
            std::string::npos);
  EXPECT_NE(text.find("stellarium_csi_staged_volumes 0"), std::string::npos);
  EXPECT_NE(text.find("stellarium_store_volumes 1"), std::string::npos);
  EXPECT_NE(text.find("stellarium_store_snapshots 1"), std::string::npos);
}

TEST_F(MetricsTest, OffByDefault) {
  StopServer();
  metrics_address_.clear();
  StartServer();
  EXPECT_EQ(server_->metrics_port(), 0);
}

}  // namespace
}  // namespace stellarium::csi::testing
