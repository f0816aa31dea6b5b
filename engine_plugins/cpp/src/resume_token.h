// resume_token.h: which resume token reopens the NPC's memory after a dropped stream. The server's word on the
// memory it saved (the "resume-token" trailer of a draining or stopping server, SessionEnded) reopens exactly
// there. A stream that ended without that word (a cut connection, a crashed worker) leaves the memory past the
// token its SessionAccepted gave (every block changes it, and the server saves it when it notices the drop or
// on its periodic snapshot), so that token would be refused as stale: the reopen then sends none and the NPC
// continues from the memory the server last saved. Not thread-safe: the session guards it.
#pragma once

#include <string>

namespace avb {

class ResumeTokenBook {
 public:
  void on_accepted(const std::string& token) {
    if (!token.empty()) token_ = token;
    saved_ = false;  // the stream now generates: the memory moves on from this token
  }
  void on_trailer(const std::string& token) { on_saved(token); }
  void on_ended(const std::string& token) { on_saved(token); }
  // A new stream is being opened: the token it must send (empty: open without one).
  std::string for_reopen() const { return saved_ ? token_ : std::string(); }
  // The latest token heard of, for the engine (what the session reports when it ends).
  const std::string& latest() const { return token_; }

 private:
  // An empty token never replaces a known one: a stream that died before the server saved anything has no word.
  void on_saved(const std::string& token) {
    if (token.empty()) return;
    token_ = token;
    saved_ = true;
  }
  std::string token_;
  bool saved_ = false;
};

}  // namespace avb
