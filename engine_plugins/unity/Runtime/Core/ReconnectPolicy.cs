// When to open a new session after one ended with an error.
//
// The core already reconnects a dropped connection within a session (AvatarSessionOptions.Reconnect: it
// reopens the stream with the NPC's resume token). A session that has ended for good (its Ended event) can
// only be followed by a new one; this policy says whether that is worth trying and after how long: capped
// exponential backoff with jitter, so many NPCs do not all come back in the same instant after a server
// restart.
using System;

namespace AvatarBackend.Client
{
    public sealed class ReconnectPolicy
    {
        readonly Random random;

        /// <param name="seed">Seeds the jitter (tests); null for a time-based seed.</param>
        public ReconnectPolicy(int? seed = null)
        {
            random = seed.HasValue ? new Random(seed.Value) : new Random();
            MaxAttempts = 6;
            InitialDelaySeconds = 0.5;
            MaxDelaySeconds = 15;
            Multiplier = 2;
            Jitter = 0.2;
        }

        /// <summary>New sessions tried in a row before giving up (0: never).</summary>
        public int MaxAttempts { get; set; }
        public double InitialDelaySeconds { get; set; }
        public double MaxDelaySeconds { get; set; }
        public double Multiplier { get; set; }
        /// <summary>Each delay is scaled by a random factor in [1 - Jitter, 1 + Jitter].</summary>
        public double Jitter { get; set; }
        /// <summary>Attempts made since the last <see cref="Reset"/>.</summary>
        public int Attempts { get; private set; }

        /// <summary>Whether a session that ended with this status may succeed if opened again: the server was
        /// unavailable (draining, restarting, unreachable), busy, or the NPC's previous session was still live
        /// on it (ABORTED). A refused config, a stale resume token or bad credentials fail the same way again.</summary>
        public static bool IsRetryable(GrpcStatusCode status)
        {
            switch (status)
            {
                case GrpcStatusCode.Unavailable:
                case GrpcStatusCode.ResourceExhausted:
                case GrpcStatusCode.Aborted:
                case GrpcStatusCode.DeadlineExceeded:
                case GrpcStatusCode.Internal:
                case GrpcStatusCode.Unknown:
                    return true;
                default:
                    return false;
            }
        }

        /// <summary>After a session ended with <paramref name="status"/>: true and the delay before the next
        /// attempt, or false when it should not be retried (a normal end, a permanent error, too many tries).</summary>
        public bool TryNextDelay(GrpcStatusCode status, out double delaySeconds)
        {
            delaySeconds = 0;
            if (status == GrpcStatusCode.Ok || !IsRetryable(status) || Attempts >= MaxAttempts)
                return false;
            double delay = InitialDelaySeconds * Math.Pow(Multiplier, Attempts);
            delay = Math.Min(delay, MaxDelaySeconds);
            delay *= 1 + Jitter * (2 * random.NextDouble() - 1);
            delaySeconds = Math.Max(0, delay);
            Attempts++;
            return true;
        }

        /// <summary>A session went live: the next failure starts from the initial delay again.</summary>
        public void Reset()
        {
            Attempts = 0;
        }
    }
}
