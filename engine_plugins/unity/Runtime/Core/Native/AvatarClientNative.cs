// The P/Invoke layer over the native client core's C ABI (engine_plugins/cpp/include/avatar_backend/
// avatar_client.h). One declaration per exported function and one struct per C struct, in the header's order
// and with the header's names, so the two can be compared line by line (tests/engine_plugins checks the
// struct sizes and field offsets against the header compiled by a C compiler, and that every exported
// function is declared here).
//
// Structs use LayoutKind.Sequential rather than explicit offsets: the config structs hold pointers, whose size
// (and so every later offset) differs between 32-bit (Android armv7) and 64-bit platforms, and sequential
// layout follows the platform's C alignment rules exactly as the C compiler does. Every struct is blittable
// (fixed buffers instead of marshalled arrays) so that polling every frame allocates nothing.
//
// Strings go in as NUL-terminated UTF-8 that this layer encodes itself: UnmanagedType.LPStr is the ANSI code
// page on Windows, and LPUTF8Str is not available on every Unity scripting backend.
using System;
using System.Runtime.InteropServices;

namespace AvatarBackend.Client.Native
{
    /// <summary>avb_result values. 1-16 are gRPC status codes (see <see cref="GrpcStatusCode"/>).</summary>
    public enum AvatarResult
    {
        Ok = 0,
        NotReady = 100,
        BufferTooSmall = 101,
        BadArgument = 102,
        Closed = 103,
    }

    /// <summary>AVB_PIXELS_*: the layout of a decoded frame's pixels.</summary>
    public enum PixelFormat
    {
        Rgba = 0,
        Rgb = 1,
    }

    /// <summary>AVB_EVENT_*: what an <see cref="AvbEvent"/> reports.</summary>
    public enum SessionEventType
    {
        State = 1,
        Server = 2,
        InterruptAck = 3,
        Ended = 4,
    }

    /// <summary>AVB_STATE_*: the session's connection state.</summary>
    public enum SessionState
    {
        None = 0,
        Opening = 1,
        Live = 2,
        Reconnecting = 3,
        Closed = 4,
    }

    /// <summary>avb_client_config.</summary>
    [Preserve]
    [StructLayout(LayoutKind.Sequential)]
    public struct AvbClientConfig
    {
        public uint struct_size;
        public IntPtr target;
        public IntPtr api_key;
        public int tls;
        public IntPtr tls_root_certs_pem;
        public IntPtr tls_client_cert_pem;
        public IntPtr tls_client_key_pem;
        public uint connect_timeout_ms;
        public uint keepalive_ms;
    }

    /// <summary>avb_session_config.</summary>
    [Preserve]
    [StructLayout(LayoutKind.Sequential)]
    public struct AvbSessionConfig
    {
        public uint struct_size;
        public IntPtr npc_id;
        public IntPtr character_id;
        public uint width;
        public uint height;
        public uint fps;
        public uint sample_rate;
        public uint jpeg_quality;
        public int reset_memory;
        public int reconnect;
        public uint max_buffered_frames;
        public float prompt_guidance;
        public uint reconnect_timeout_ms;
    }

    /// <summary>avb_frame_info: where a decoded frame sits on the session clock.</summary>
    [Preserve]
    [StructLayout(LayoutKind.Sequential)]
    public struct AvbFrameInfo
    {
        public ulong index;
        public ulong pts;
        public ulong audio_start;
        public ulong audio_end;
        public uint width;
        public uint height;
        public int speaking;
    }

    /// <summary>avb_event. values: for InterruptAck, next_frame_index, replace_from_pts, dropped_samples,
    /// unheard_samples; detail: for Ended, the NPC's resume token.</summary>
    [Preserve]
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct AvbEvent
    {
        public const int TextCapacity = 512;
        public const int DetailCapacity = 256;

        public int type;
        public int code;
        public fixed ulong values[4];
        public fixed byte text[TextCapacity];
        public fixed byte detail[DetailCapacity];
    }

    /// <summary>avb_stats.</summary>
    [Preserve]
    [StructLayout(LayoutKind.Sequential)]
    public struct AvbStats
    {
        public uint struct_size;
        public int state;
        public ulong frames_received;
        public ulong frames_dropped;
        public uint buffered_frames;
        public ulong buffered_audio_samples;
        public double generated_fps;
        public double first_frame_latency_ms;
        public uint reconnects;
    }

    /// <summary>The exported functions of the native core, one to one.</summary>
    [Preserve]
    public static class AvatarClientNative
    {
        /// <summary>The ABI this layer was written against (AVB_ABI_VERSION).</summary>
        public const uint AbiVersion = 1;

        // iOS links native plugins statically into the player, so the symbols are in the executable itself.
#if UNITY_IOS && !UNITY_EDITOR
        public const string LibraryName = "__Internal";
#else
        public const string LibraryName = "avatar_client";
#endif

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint avb_abi_version();

        // --- client ---

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_client_create(ref AvbClientConfig config, out IntPtr out_client);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern void avb_client_destroy(IntPtr client);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern UIntPtr avb_client_last_error(ClientHandle client, byte[] message, UIntPtr capacity);

        // --- session ---

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_open(ClientHandle client, ref AvbSessionConfig config,
                                                  out IntPtr out_session);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_close(SessionHandle session);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern void avb_session_destroy(IntPtr session);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern UIntPtr avb_session_last_error(SessionHandle session, byte[] message, UIntPtr capacity);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_push_pcm(SessionHandle session, short[] samples, UIntPtr count);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_push_opus(SessionHandle session, byte[] packet, UIntPtr size);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_end_utterance(SessionHandle session);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern ulong avb_session_voice_samples_sent(SessionHandle session);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_set_emotion(SessionHandle session, byte[] name, float intensity);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_play_action(SessionHandle session, byte[] preset);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_set_emotion_at(SessionHandle session, byte[] name, float intensity,
                                                            ulong at_voice_sample);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_play_action_at(SessionHandle session, byte[] preset,
                                                            ulong at_voice_sample);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_set_listening(SessionHandle session, int listening);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_playback_progress(SessionHandle session, ulong played_until);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_interrupt(SessionHandle session);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_poll_frame(SessionHandle session, int pixel_format, byte[] pixels,
                                                        UIntPtr capacity, out AvbFrameInfo info);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_poll_due_frame(SessionHandle session, ulong playback_pts,
                                                            int pixel_format, byte[] pixels, UIntPtr capacity,
                                                            out AvbFrameInfo info);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_poll_audio(SessionHandle session, short[] samples, UIntPtr capacity,
                                                        out UIntPtr out_count, out ulong out_start);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_poll_event(SessionHandle session, out AvbEvent out_event);

        [DllImport(LibraryName, CallingConvention = CallingConvention.Cdecl)]
        public static extern int avb_session_get_stats(SessionHandle session, ref AvbStats out_stats);
    }
}
