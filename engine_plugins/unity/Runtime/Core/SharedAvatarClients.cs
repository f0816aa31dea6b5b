// One connection per server for all the NPCs of a scene: a client (one HTTP/2 connection, many streams) is
// created by the first NPC that needs it and destroyed when the last one lets it go.
using System;
using System.Collections.Generic;

namespace AvatarBackend.Client
{
    public static class SharedAvatarClients
    {
        sealed class Entry
        {
            public AvatarClient Client;
            public int Leases;
        }

        static readonly object Gate = new object();
        static readonly Dictionary<string, Entry> Clients = new Dictionary<string, Entry>();

        /// <summary>A share of a client; dispose it when done (after the sessions opened on it).</summary>
        public sealed class Lease : IDisposable
        {
            readonly string key;
            bool released;

            internal Lease(string key, AvatarClient client)
            {
                this.key = key;
                Client = client;
            }

            public AvatarClient Client { get; private set; }

            public void Dispose()
            {
                lock (Gate)
                {
                    if (released)
                        return;
                    released = true;
                    Entry entry;
                    if (!Clients.TryGetValue(key, out entry) || --entry.Leases > 0)
                        return;
                    Clients.Remove(key);
                    entry.Client.Dispose();
                }
            }
        }

        /// <summary>The client for these options, shared with every other lease of the same server, key and TLS
        /// settings.</summary>
        public static Lease Acquire(AvatarClientOptions options)
        {
            string key = string.Join("\n", new[]
            {
                options.Target, options.ApiKey ?? "", options.UseTls ? "tls" : "plaintext",
                options.TlsRootCertsPem ?? "", options.TlsClientCertPem ?? "",
            });
            lock (Gate)
            {
                Entry entry;
                if (!Clients.TryGetValue(key, out entry))
                {
                    entry = new Entry { Client = new AvatarClient(options) };
                    Clients.Add(key, entry);
                }
                entry.Leases++;
                return new Lease(key, entry.Client);
            }
        }

        /// <summary>Clients alive now (for tests and diagnostics).</summary>
        public static int Count
        {
            get { lock (Gate) return Clients.Count; }
        }
    }
}
