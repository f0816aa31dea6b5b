// resume_token.h: which resume token reopens the NPC's memory after a dropped stream. The latest word wins:
// SessionAccepted.resume_token (the memory as this stream found it), then the "resume-token" trailer or
// SessionEnded (the memory as the stream saved it). Not thread-safe: the session guards it.
#pragma once

#include <string>

namespace avb {

class ResumeTokenBook {
 public:
  void on_accepted(const std::string& token) { remember(token); }
  void on_trailer(const std::string& token) { remember(token); }
  void on_ended(const std::string& token) { remember(token); }
  // A new stream is being opened: the token it must send (empty: none known, open without one).
  const std::string& for_reopen() const { return token_; }
  const std::string& latest() const { return token_; }

 private:
  // An empty token never replaces a known one: a stream that died before the server saved anything
  // (a crash, a cut cable) leaves the memory as the last token described it.
  void remember(const std::string& token) {
    if (!token.empty()) token_ = token;
  }
  std::string token_;
};

}  // namespace avb
