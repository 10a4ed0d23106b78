// A temporary file next to its destination, renamed over it on commit() and removed otherwise, so
// an output is either complete or untouched. The path being written is kept for signal handlers
// (cadyq::pending_temp_file in image_io.hpp).
#pragma once

#include <string>

namespace cadyq::detail {

class TempFile {
 public:
  explicit TempFile(const std::string& destination);  // Error(Image) if it cannot be created
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  const std::string& path() const { return path_; }
  int release_fd();  // the open descriptor; the caller closes it
  void commit();     // gives the file the usual permissions and renames it over the destination

 private:
  std::string destination_, path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace cadyq::detail
