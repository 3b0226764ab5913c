#include "nbd/tls_channel.h"

namespace shale::nbd {

Result<std::unique_ptr<TlsChannel>> TlsChannel::Start(std::shared_ptr<const tls::Credentials> creds,
                                                      std::span<const uint8_t> early) {
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<tls::Session> session,
                         tls::Session::Create(std::move(creds), tls::Role::kServer));
  if (!early.empty()) session->AppendInput(early);
  return std::unique_ptr<TlsChannel>(new TlsChannel(std::move(session)));
}

Status TlsChannel::Encrypt(const iovec* iov, size_t n) {
  iov_.clear();
  size_t bytes = 0;
  for (size_t i = 0; i < n && bytes < kTlsSendBudget; ++i) {
    iovec piece = iov[i];
    piece.iov_len = std::min(piece.iov_len, kTlsSendBudget - bytes);
    bytes += piece.iov_len;
    iov_.push_back(piece);
  }
  SHALE_RETURN_IF_ERROR(session_->WriteGather(iov_));
  session_->TakeOutput(&send_);
  sent_ = 0;
  plain_ = bytes;
  return Status::Ok();
}

bool TlsChannel::Sent(size_t n, size_t* plain) {
  sent_ += n;
  if (sent_ < send_.size()) return false;
  send_.clear();
  sent_ = 0;
  *plain = plain_;
  plain_ = 0;
  return true;
}

void TlsChannel::Established() {
  handshaking = false;
  ready = true;
  peer_names_ = session_->peer().Names();
  identity_ = session_->peer().ToString();
}

}  // namespace shale::nbd
