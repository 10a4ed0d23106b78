#include "temp_file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cadyq/error.hpp"
#include "cadyq/image_io.hpp"

namespace cadyq {

namespace {

char g_pending[4096];
std::atomic<bool> g_pending_set{false};
std::atomic<bool> g_pending_busy{false};

}  // namespace

const char* pending_temp_file() noexcept { return g_pending_set.load() ? g_pending : nullptr; }

namespace detail {

TempFile::TempFile(const std::string& destination) : destination_(destination) {
  const auto slash = destination.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "" : destination.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? destination : destination.substr(slash + 1);
  std::string pattern = dir + "." + name + ".XXXXXX.tmp";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  fd_ = ::mkstemps(buf.data(), 4);
  if (fd_ < 0) throw Error(ErrorCode::Image, destination + ": cannot write (" + std::strerror(errno) + "); check permissions");
  path_ = buf.data();
  bool expected = false;
  if (path_.size() < sizeof g_pending && g_pending_busy.compare_exchange_strong(expected, true)) {
    std::memcpy(g_pending, path_.c_str(), path_.size() + 1);
    g_pending_set = true;
  }
}

TempFile::~TempFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(path_.c_str());
  if (g_pending_set && std::strcmp(g_pending, path_.c_str()) == 0) {
    g_pending_set = false;
    g_pending_busy = false;
  }
}

int TempFile::release_fd() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

void TempFile::commit() {
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::chmod(path_.c_str(), 0666 & ~mask);  // mkstemp makes 0600; outputs get the usual permissions
  if (std::rename(path_.c_str(), destination_.c_str()) != 0)
    throw Error(ErrorCode::Image, destination_ + ": cannot write (" + std::strerror(errno) + ")");
  committed_ = true;
}

}  // namespace detail

void write_file_atomically(const std::string& path, const std::string& bytes) {
  detail::TempFile tmp(path);
  const int fd = tmp.release_fd();
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int saved = errno;
      ::close(fd);
      throw Error(ErrorCode::Image, path + ": cannot write (" + std::strerror(saved) + "); check free space and permissions");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0) throw Error(ErrorCode::Image, path + ": cannot write (" + std::strerror(errno) + ")");
  tmp.commit();
}

}  // namespace cadyq
