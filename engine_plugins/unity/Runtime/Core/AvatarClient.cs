// The managed face of the native core: a client (one connection to the server) and the sessions opened on it.
// Engine independent: nothing here references UnityEngine, so it runs under plain mono in CI.
using System;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client
{
    /// <summary>gRPC status codes, as the core reports a failed call or stream (avb_result 1-16, and the code of
    /// an Ended event).</summary>
    public enum GrpcStatusCode
    {
        Ok = 0,
        Cancelled = 1,
        Unknown = 2,
        InvalidArgument = 3,
        DeadlineExceeded = 4,
        NotFound = 5,
        AlreadyExists = 6,
        PermissionDenied = 7,
        ResourceExhausted = 8,
        FailedPrecondition = 9,
        Aborted = 10,
        OutOfRange = 11,
        Unimplemented = 12,
        Internal = 13,
        Unavailable = 14,
        DataLoss = 15,
        Unauthenticated = 16,
    }

    /// <summary>A call into the core failed. <see cref="Result"/> is the avb_result: a gRPC status code (1-16)
    /// or one of the core's own (<see cref="AvatarResult"/>).</summary>
    public sealed class AvatarBackendException : Exception
    {
        public int Result { get; private set; }

        public AvatarBackendException(int result, string message) : base(Describe(result) + ": " + message)
        {
            Result = result;
        }

        public static string Describe(int result)
        {
            if (result > 0 && result <= 16)
                return "gRPC " + (GrpcStatusCode)result;
            return ((AvatarResult)result).ToString();
        }
    }

    /// <summary>How to reach the server (avb_client_config).</summary>
    public sealed class AvatarClientOptions
    {
        /// <summary>"host:port".</summary>
        public string Target = "127.0.0.1:50051";
        /// <summary>Sent as "authorization: Bearer &lt;key&gt;"; null or empty for none.</summary>
        public string ApiKey;
        public bool UseTls;
        /// <summary>PEM roots to trust; null for the system's.</summary>
        public string TlsRootCertsPem;
        public string TlsClientCertPem;
        public string TlsClientKeyPem;
        /// <summary>0: the core's default (10000).</summary>
        public uint ConnectTimeoutMs;
        /// <summary>0: the core's default (30000).</summary>
        public uint KeepaliveMs;
    }

    /// <summary>One conversation with one NPC (avb_session_config).</summary>
    public sealed class AvatarSessionOptions
    {
        /// <summary>Required: the NPC's id (1-128 characters of [A-Za-z0-9_.-]); its memory persists.</summary>
        public string NpcId;
        /// <summary>The registered character the NPC looks like; required for a new NPC, else empty or equal.</summary>
        public string CharacterId;
        /// <summary>0: the NPC's size, or the model's default.</summary>
        public uint Width;
        public uint Height;
        /// <summary>0: the model's.</summary>
        public uint Fps;
        /// <summary>Of pushed PCM and of echoed audio: 48000 or 16000.</summary>
        public uint SampleRate = 48000;
        /// <summary>0: the server's default.</summary>
        public uint JpegQuality;
        /// <summary>Start the NPC from a fresh memory.</summary>
        public bool ResetMemory;
        /// <summary>After a dropped connection, the core reopens the stream with the NPC's resume token.</summary>
        public bool Reconnect = true;
        /// <summary>With Reconnect: how long the core keeps reopening a dropped stream before the session ends
        /// with its last error (its Ended event); 0: it never gives up.</summary>
        public uint ReconnectTimeoutMs;
        /// <summary>Decoded frames held for polling; beyond it the oldest go (0: 96).</summary>
        public uint MaxBufferedFrames;
        /// <summary>How strongly the NPC's emotions and actions show: the prompt guidance factor (0: the
        /// server's; else 1 = off up to the server's limit, ServerInfo.limits.max_prompt_guidance; between 0
        /// and 1 OpenSession throws).</summary>
        public float PromptGuidance;
    }

    /// <summary>A connection to the server (avb_client). Thread safe; dispose it after its sessions.</summary>
    public sealed class AvatarClient : IDisposable
    {
        readonly ClientHandle handle;

        /// <summary>The ABI version of the loaded native library. Throws DllNotFoundException when the library
        /// cannot be loaded (see the package README, "Troubleshooting").</summary>
        public static uint NativeAbiVersion
        {
            get { return AvatarClientNative.avb_abi_version(); }
        }

        /// <summary>Throws when the loaded native library was built for another ABI than this layer.</summary>
        public static void CheckNativeAbi()
        {
            uint native = NativeAbiVersion;
            if (native != AvatarClientNative.AbiVersion)
                throw new AvatarBackendException((int)AvatarResult.BadArgument, string.Format(
                    "the native avatar_client library has ABI version {0}, this package expects {1}: install the " +
                    "library built from the same release", native, AvatarClientNative.AbiVersion));
        }

        public AvatarClient(AvatarClientOptions options)
        {
            if (options == null)
                throw new ArgumentNullException("options");
            if (string.IsNullOrEmpty(options.Target))
                throw new ArgumentException("Target (host:port) is required", "options");
            CheckNativeAbi();
            using (var strings = new NativeUtf8Strings())
            {
                var config = new AvbClientConfig
                {
                    struct_size = (uint)System.Runtime.InteropServices.Marshal.SizeOf(typeof(AvbClientConfig)),
                    target = strings.Add(options.Target),
                    api_key = strings.Add(string.IsNullOrEmpty(options.ApiKey) ? null : options.ApiKey),
                    tls = options.UseTls ? 1 : 0,
                    tls_root_certs_pem = strings.Add(options.TlsRootCertsPem),
                    tls_client_cert_pem = strings.Add(options.TlsClientCertPem),
                    tls_client_key_pem = strings.Add(options.TlsClientKeyPem),
                    connect_timeout_ms = options.ConnectTimeoutMs,
                    keepalive_ms = options.KeepaliveMs,
                };
                IntPtr client;
                int result = AvatarClientNative.avb_client_create(ref config, out client);
                if (result != (int)AvatarResult.Ok || client == IntPtr.Zero)
                    // No handle to ask for the client's last error: the result code is all there is.
                    throw new AvatarBackendException(result, "avb_client_create failed for " + options.Target);
                handle = new ClientHandle(client);
            }
        }

        /// <summary>The last error of a client-level call.</summary>
        public string LastError
        {
            get { return ReadError(handle, null); }
        }

        /// <summary>Starts opening a session and returns at once; its State events report the progress.</summary>
        public AvatarSession OpenSession(AvatarSessionOptions options)
        {
            if (options == null)
                throw new ArgumentNullException("options");
            if (string.IsNullOrEmpty(options.NpcId))
                throw new ArgumentException("NpcId is required", "options");
            using (var strings = new NativeUtf8Strings())
            {
                var config = new AvbSessionConfig
                {
                    struct_size = (uint)System.Runtime.InteropServices.Marshal.SizeOf(typeof(AvbSessionConfig)),
                    npc_id = strings.Add(options.NpcId),
                    character_id = strings.Add(string.IsNullOrEmpty(options.CharacterId) ? null : options.CharacterId),
                    width = options.Width,
                    height = options.Height,
                    fps = options.Fps,
                    sample_rate = options.SampleRate,
                    jpeg_quality = options.JpegQuality,
                    reset_memory = options.ResetMemory ? 1 : 0,
                    reconnect = options.Reconnect ? 1 : 0,
                    max_buffered_frames = options.MaxBufferedFrames,
                    prompt_guidance = options.PromptGuidance,
                    reconnect_timeout_ms = options.ReconnectTimeoutMs,
                };
                IntPtr session;
                int result = AvatarClientNative.avb_session_open(handle, ref config, out session);
                if (result != (int)AvatarResult.Ok || session == IntPtr.Zero)
                    throw new AvatarBackendException(result, ReadError(handle, null));
                return new AvatarSession(new SessionHandle(session, handle), options);
            }
        }

        public void Dispose()
        {
            handle.Dispose();
        }

        internal static string ReadError(ClientHandle client, SessionHandle session)
        {
            var message = new byte[1024];
            ulong length = session != null
                ? (ulong)AvatarClientNative.avb_session_last_error(session, message, (UIntPtr)message.Length)
                : (ulong)AvatarClientNative.avb_client_last_error(client, message, (UIntPtr)message.Length);
            if (length >= (ulong)message.Length)
            {
                message = new byte[length + 1];
                if (session != null)
                    AvatarClientNative.avb_session_last_error(session, message, (UIntPtr)message.Length);
                else
                    AvatarClientNative.avb_client_last_error(client, message, (UIntPtr)message.Length);
            }
            return Utf8.FromNullTerminated(message, message.Length);
        }
    }
}
