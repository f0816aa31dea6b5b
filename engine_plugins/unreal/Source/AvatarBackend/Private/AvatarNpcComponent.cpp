#include "AvatarNpcComponent.h"

#include "AudioCaptureCore.h"
#include "AvatarBackendModule.h"
#include "AvatarEchoSoundWave.h"
#include "Components/AudioComponent.h"
#include "Engine/Texture2D.h"
#include "GameFramework/Actor.h"
#include "HAL/PlatformTime.h"
#include "Portable/AvatarEchoPlayback.h"
#include "Portable/AvatarVoiceChunker.h"
#include "Portable/AvatarVoiceSamples.h"
#include "Sound/SoundWave.h"
#include "Sound/SoundWaveProxyReader.h"
#include "avatar_backend/avatar_client.h"

#include <atomic>

namespace
{
constexpr int32 MaxEventsPerTick = 64;     // a burst (a reconnect's backlog) never stalls a frame
constexpr int32 MaxAudioPollsPerTick = 32;
constexpr double CloseTimeoutSeconds = 3.0;
constexpr double StatsRefreshSeconds = 0.5;
constexpr int32 BytesPerPixel = 4;         // AVB_PIXELS_RGBA into PF_R8G8B8A8
constexpr int32 EventCodeUtteranceComplete = 6;  // EventCode of proto/avatar/v1/converse.proto
}

// One frame's pixels and its region, kept alive until the render thread has copied them into the texture.
struct UAvatarNpcComponent::FPixelBuffer
{
	TArray<uint8> Pixels;
	FUpdateTextureRegion2D Region;
	std::atomic<bool> bInFlight{false};
};

UAvatarNpcComponent::UAvatarNpcComponent()
{
	PrimaryComponentTick.bCanEverTick = true;
	PrimaryComponentTick.bStartWithTickEnabled = true;
}

void UAvatarNpcComponent::BeginPlay()
{
	Super::BeginPlay();
	if (bStartOnBeginPlay)
	{
		StartSession();
	}
}

void UAvatarNpcComponent::EndPlay(const EEndPlayReason::Type EndPlayReason)
{
	// No more ticks to wait for the end: cancel now (the server still saves the NPC's memory).
	StopMicrophone();
	DestroySession();
	Super::EndPlay(EndPlayReason);
}

// --- session ---------------------------------------------------------------------------------------------

bool UAvatarNpcComponent::StartSession()
{
	if (Session != nullptr)
	{
		return true;
	}
	if (!FAvatarBackendModule::IsNativeCoreAvailable())
	{
		ReportError(TEXT("the native client core (libavatar_client) is not loaded: see the plugin's README"));
		return false;
	}
	if (Client == nullptr)
	{
		const FTCHARToUTF8 Target(*ServerTarget);
		const FTCHARToUTF8 Key(*ApiKey);
		avb_client_config Config = {};
		Config.struct_size = sizeof(Config);
		Config.target = Target.Get();
		Config.api_key = ApiKey.IsEmpty() ? nullptr : Key.Get();
		Config.tls = bUseTls ? 1 : 0;
		const avb_result Result = avb_client_create(&Config, &Client);
		if (Result != AVB_OK)
		{
			Client = nullptr;
			ReportError(FString::Printf(TEXT("could not create a client for %s (result %d)"), *ServerTarget, Result));
			return false;
		}
	}
	const FTCHARToUTF8 Npc(*NpcId);
	const FTCHARToUTF8 Character(*CharacterId);
	avb_session_config Config = {};
	Config.struct_size = sizeof(Config);
	Config.npc_id = Npc.Get();
	Config.character_id = CharacterId.IsEmpty() ? nullptr : Character.Get();
	Config.width = FMath::Max(0, Width);
	Config.height = FMath::Max(0, Height);
	Config.fps = FMath::Max(0, Fps);
	Config.sample_rate = SampleRate;
	Config.reset_memory = bResetMemory ? 1 : 0;
	Config.reconnect = bReconnect ? 1 : 0;
	Config.max_buffered_frames = FMath::Max(0, MaxBufferedFrames);
	Config.prompt_guidance = PromptGuidance;
	Config.reconnect_timeout_ms = static_cast<uint32_t>(FMath::Max(0, ReconnectTimeoutMs));
	const avb_result Result = avb_session_open(Client, &Config, &Session);
	if (Result != AVB_OK)
	{
		Session = nullptr;
		char Message[512] = {};
		avb_client_last_error(Client, Message, sizeof(Message));
		ReportError(FString::Printf(TEXT("could not open the session of NPC %s: %s"), *NpcId, UTF8_TO_TCHAR(Message)));
		return false;
	}

	Echo = MakeShared<avatar_backend::EchoPlayback, ESPMode::ThreadSafe>(SampleRate);
	GameThreadChunker = MakeUnique<avatar_backend::VoiceChunker>(SampleRate);
	EchoedVoice.SetNumUninitialized(SampleRate / 10);
	if (EchoSoundWave == nullptr)
	{
		EchoSoundWave = NewObject<UAvatarEchoSoundWave>(this);
	}
	EchoSoundWave->SetEchoPlayback(Echo);
	if (VoiceAudioComponent == nullptr && GetOwner() != nullptr)
	{
		VoiceAudioComponent = NewObject<UAudioComponent>(GetOwner(), TEXT("AvatarNpcVoice"));
		VoiceAudioComponent->bAutoActivate = false;
		if (USceneComponent* Root = GetOwner()->GetRootComponent())
		{
			VoiceAudioComponent->SetupAttachment(Root);
		}
		VoiceAudioComponent->RegisterComponent();
	}
	if (VoiceAudioComponent != nullptr)
	{
		VoiceAudioComponent->SetSound(EchoSoundWave);
		VoiceAudioComponent->Play();
	}
	CloseDeadline = -1;
	return true;
}

void UAvatarNpcComponent::StopSession()
{
	if (Session == nullptr)
	{
		return;
	}
	StopMicrophone();
	if (avb_session_close(Session) == AVB_OK)
	{
		// TickComponent keeps polling until the Ended event brings the resume token, or this passes.
		CloseDeadline = FPlatformTime::Seconds() + CloseTimeoutSeconds;
	}
	else
	{
		DestroySession();
	}
}

void UAvatarNpcComponent::DestroySession()
{
	// The capture thread pushes to the session: its stream closes before the session can go (an Ended event
	// or the close timeout destroys it while the microphone may still be open).
	StopMicrophone();
	CloseDeadline = -1;
	if (Session != nullptr)
	{
		avb_session_destroy(Session);
		Session = nullptr;
	}
	if (EchoSoundWave != nullptr)
	{
		EchoSoundWave->SetEchoPlayback(nullptr);
	}
	if (VoiceAudioComponent != nullptr && VoiceAudioComponent->Sound == EchoSoundWave)
	{
		VoiceAudioComponent->Stop();
	}
	if (Client != nullptr)
	{
		avb_client_destroy(Client);
		Client = nullptr;
	}
}

// --- voice input -----------------------------------------------------------------------------------------

bool UAvatarNpcComponent::SpeakSoundWave(USoundWave* SoundWave)
{
	if (Session == nullptr || SoundWave == nullptr)
	{
		return false;
	}
	FSoundWaveProxyPtr Proxy = SoundWave->CreateSoundWaveProxy();
	if (!Proxy.IsValid())
	{
		ReportError(FString::Printf(TEXT("cannot read %s"), *SoundWave->GetName()));
		return false;
	}
	FSoundWaveProxyReader::FSettings Settings;
	Settings.MaxDecodeSizeInFrames = 8192;
	TUniquePtr<FSoundWaveProxyReader> Reader = FSoundWaveProxyReader::Create(Proxy.ToSharedRef(), Settings);
	if (!Reader.IsValid())
	{
		ReportError(FString::Printf(TEXT("cannot decode %s: load its compressed data (Loading Behavior)"), *SoundWave->GetName()));
		return false;
	}
	const int32 Channels = FMath::Max(1, Reader->GetNumChannels());
	const int32 SourceRate = FMath::RoundToInt(Reader->GetSampleRate());
	Audio::FAlignedFloatBuffer Decoded;
	Decoded.SetNumUninitialized(Settings.MaxDecodeSizeInFrames * Channels);
	avb_session* Target = Session;
	auto Push = [Target](const int16_t* Samples, size_t Count) { avb_session_push_pcm(Target, Samples, Count); };
	while (Reader->CanProduceMoreAudio())
	{
		const int32 SamplesRead = Reader->PopAudio(Decoded);
		if (SamplesRead <= 0)
		{
			break;
		}
		GameThreadChunker->Write(Decoded.GetData(), SamplesRead / Channels, Channels, SourceRate, Push);
	}
	EndUtterance();
	return !Reader->HasFailed();
}

void UAvatarNpcComponent::PushVoice(const TArray<float>& Samples, int32 SourceSampleRate, int32 NumChannels)
{
	if (Session == nullptr || NumChannels <= 0)
	{
		return;
	}
	avb_session* Target = Session;
	GameThreadChunker->Write(Samples.GetData(), Samples.Num() / NumChannels, NumChannels, SourceSampleRate,
		[Target](const int16_t* Voice, size_t Count) { avb_session_push_pcm(Target, Voice, Count); });
}

void UAvatarNpcComponent::EndUtterance()
{
	if (Session == nullptr)
	{
		return;
	}
	avb_session* Target = Session;
	GameThreadChunker->Flush([Target](const int16_t* Voice, size_t Count) { avb_session_push_pcm(Target, Voice, Count); });
	avb_session_end_utterance(Session);
}

bool UAvatarNpcComponent::StartMicrophone()
{
	if (Session == nullptr || Microphone.IsValid())
	{
		return Microphone.IsValid();
	}
	Microphone = MakeUnique<Audio::FAudioCapture>();
	MicrophoneChunker = MakeUnique<avatar_backend::VoiceChunker>(SampleRate);
	avb_session* Target = Session;
	avatar_backend::VoiceChunker* Chunker = MicrophoneChunker.Get();
	// The capture thread: float samples, pushed straight to the core (which never blocks).
	Audio::FOnAudioCaptureFunction OnCapture = [Target, Chunker](const void* Audio, int32 NumFrames, int32 NumChannels,
		int32 CaptureSampleRate, double StreamTime, bool bOverflow)
	{
		Chunker->Write(static_cast<const float*>(Audio), NumFrames, NumChannels, CaptureSampleRate,
			[Target](const int16_t* Voice, size_t Count) { avb_session_push_pcm(Target, Voice, Count); });
	};
	Audio::FAudioCaptureDeviceParams Params;
	if (!Microphone->OpenAudioCaptureStream(Params, MoveTemp(OnCapture), 480) || !Microphone->StartStream())
	{
		Microphone.Reset();
		ReportError(TEXT("the microphone could not be opened"));
		return false;
	}
	return true;
}

void UAvatarNpcComponent::StopMicrophone()
{
	if (!Microphone.IsValid())
	{
		return;
	}
	// Closing the stream waits for its callback, so the chunker is the game thread's again afterwards.
	Microphone->StopStream();
	Microphone->CloseStream();
	Microphone.Reset();
	if (Session != nullptr)
	{
		avb_session* Target = Session;
		MicrophoneChunker->Flush([Target](const int16_t* Voice, size_t Count) { avb_session_push_pcm(Target, Voice, Count); });
		avb_session_end_utterance(Session);
	}
	MicrophoneChunker.Reset();
}

// --- control ---------------------------------------------------------------------------------------------

void UAvatarNpcComponent::SetEmotion(const FString& Emotion, float Intensity)
{
	if (Session != nullptr)
	{
		avb_session_set_emotion(Session, TCHAR_TO_UTF8(*Emotion), Intensity);
	}
}

void UAvatarNpcComponent::PlayAction(const FString& Preset)
{
	if (Session != nullptr)
	{
		avb_session_play_action(Session, TCHAR_TO_UTF8(*Preset));
	}
}

void UAvatarNpcComponent::SetEmotionAtVoiceSample(const FString& Emotion, float Intensity, int64 AtVoiceSample)
{
	uint64_t VoiceSample = 0;
	if (!avatar_backend::VoiceSampleFromBlueprint(AtVoiceSample, &VoiceSample))
	{
		ReportError(FString::Printf(TEXT("SetEmotionAtVoiceSample: voice sample %lld is negative"), static_cast<long long>(AtVoiceSample)));
		return;
	}
	if (Session != nullptr)
	{
		avb_session_set_emotion_at(Session, TCHAR_TO_UTF8(*Emotion), Intensity, VoiceSample);
	}
}

void UAvatarNpcComponent::PlayActionAtVoiceSample(const FString& Preset, int64 AtVoiceSample)
{
	uint64_t VoiceSample = 0;
	if (!avatar_backend::VoiceSampleFromBlueprint(AtVoiceSample, &VoiceSample))
	{
		ReportError(FString::Printf(TEXT("PlayActionAtVoiceSample: voice sample %lld is negative"), static_cast<long long>(AtVoiceSample)));
		return;
	}
	if (Session != nullptr)
	{
		avb_session_play_action_at(Session, TCHAR_TO_UTF8(*Preset), VoiceSample);
	}
}

int64 UAvatarNpcComponent::GetVoiceSamplesSent() const
{
	return Session != nullptr ? avatar_backend::VoiceSamplesForBlueprint(avb_session_voice_samples_sent(Session)) : 0;
}

void UAvatarNpcComponent::Interrupt()
{
	if (Session != nullptr)
	{
		// Silence at once rather than when the answer comes (a block's compute later): the voice not yet handed
		// to the mixer is dropped and the face holds its frame until the new video arrives.
		Echo->DiscardFrom(Echo->PlayedUntil());
		avb_session_interrupt(Session);
	}
}

void UAvatarNpcComponent::SetListening(bool bListening)
{
	if (Session != nullptr)
	{
		avb_session_set_listening(Session, bListening ? 1 : 0);
	}
}

// --- the game-thread loop --------------------------------------------------------------------------------

void UAvatarNpcComponent::TickComponent(float DeltaTime, ELevelTick TickType, FActorComponentTickFunction* ThisTickFunction)
{
	Super::TickComponent(DeltaTime, TickType, ThisTickFunction);
	if (Session == nullptr)
	{
		return;
	}
	PollEvents();
	if (Session == nullptr)
	{
		return;
	}
	PollEchoedVoice();
	ShowDueFrame(DeltaTime);
	RefreshStats();
	if (CloseDeadline >= 0 && FPlatformTime::Seconds() >= CloseDeadline)
	{
		DestroySession();
	}
}

void UAvatarNpcComponent::PollEvents()
{
	avb_event Event;
	for (int32 Polled = 0; Polled < MaxEventsPerTick && Session != nullptr; ++Polled)
	{
		if (avb_session_poll_event(Session, &Event) != AVB_OK)
		{
			return;
		}
		switch (Event.type)
		{
		case AVB_EVENT_STATE:
			Stats.State = static_cast<EAvatarSessionState>(Event.code);
			OnSessionStateChanged.Broadcast(Stats.State);
			break;
		case AVB_EVENT_SERVER:
			if (Event.code == EventCodeUtteranceComplete)
			{
				OnUtteranceComplete.Broadcast();
			}
			else
			{
				OnServerEvent.Broadcast(Event.code, UTF8_TO_TCHAR(Event.text));
			}
			break;
		case AVB_EVENT_INTERRUPT_ACK:
			// The core dropped what it still held; drop what was already polled for playback.
			Echo->DiscardFrom(Event.values[1]);
			OnInterrupted.Broadcast(static_cast<int64>(Event.values[1]));
			break;
		case AVB_EVENT_ENDED:
		{
			LastResumeToken = UTF8_TO_TCHAR(Event.detail);
			const FString Message = UTF8_TO_TCHAR(Event.text);
			const int32 Status = Event.code;
			DestroySession();
			Stats.State = EAvatarSessionState::Closed;
			OnSessionStateChanged.Broadcast(EAvatarSessionState::Closed);
			if (Status != 0)
			{
				ReportError(FString::Printf(TEXT("the session of NPC %s ended with gRPC status %d: %s"), *NpcId, Status, *Message));
			}
			return;
		}
		default:
			break;
		}
	}
}

void UAvatarNpcComponent::PollEchoedVoice()
{
	for (int32 Polled = 0; Polled < MaxAudioPollsPerTick; ++Polled)
	{
		size_t Count = 0;
		uint64_t Start = 0;
		if (avb_session_poll_audio(Session, EchoedVoice.GetData(), EchoedVoice.Num(), &Count, &Start) != AVB_OK || Count == 0)
		{
			return;
		}
		Echo->Enqueue(EchoedVoice.GetData(), Count, Start);
	}
}

void UAvatarNpcComponent::ShowDueFrame(float DeltaTime)
{
	// Without a playing voice component nothing drains the echoed voice: let game time play it silently.
	if (VoiceAudioComponent == nullptr || !VoiceAudioComponent->IsPlaying())
	{
		Echo->Skip(static_cast<size_t>(DeltaTime * SampleRate));
	}
	const uint64 HeardUntil = avatar_backend::HeardUntil(Echo->PlayedUntil(), OutputLatencyMs / 1000.0, SampleRate);
	avb_session_playback_progress(Session, HeardUntil);

	TSharedPtr<FPixelBuffer, ESPMode::ThreadSafe> Buffer;
	for (const TSharedPtr<FPixelBuffer, ESPMode::ThreadSafe>& Candidate : PixelBuffers)
	{
		if (!Candidate->bInFlight.load())
		{
			Buffer = Candidate;
			break;
		}
	}
	if (!Buffer.IsValid())
	{
		if (PixelBuffers.Num() >= 2)
		{
			return;  // both are being uploaded: the core keeps the frame, a newer one is taken next tick
		}
		Buffer = MakeShared<FPixelBuffer, ESPMode::ThreadSafe>();
		Buffer->Pixels.SetNumUninitialized(FMath::Max(1, Width * Height) * BytesPerPixel);
		PixelBuffers.Add(Buffer);
	}

	avb_frame_info Info = {};
	avb_result Result = avb_session_poll_due_frame(Session, HeardUntil, AVB_PIXELS_RGBA, Buffer->Pixels.GetData(),
		Buffer->Pixels.Num(), &Info);
	// The size is only known from the frame: grow (nothing was taken) and ask again.
	for (int32 Growth = 0; Result == AVB_BUFFER_TOO_SMALL && Growth < 8; ++Growth)
	{
		const int64 Needed = static_cast<int64>(Info.width) * Info.height * BytesPerPixel;
		Buffer->Pixels.SetNumUninitialized(static_cast<int32>(Needed > Buffer->Pixels.Num() ? Needed : Buffer->Pixels.Num() * 4));
		Result = avb_session_poll_due_frame(Session, HeardUntil, AVB_PIXELS_RGBA, Buffer->Pixels.GetData(),
			Buffer->Pixels.Num(), &Info);
	}
	if (Result != AVB_OK)
	{
		return;
	}

	if (FrameTexture == nullptr || FrameTexture->GetSizeX() != static_cast<int32>(Info.width)
		|| FrameTexture->GetSizeY() != static_cast<int32>(Info.height))
	{
		FrameTexture = UTexture2D::CreateTransient(Info.width, Info.height, PF_R8G8B8A8);
		FrameTexture->SRGB = true;
		FrameTexture->UpdateResource();
	}
	// Rows top to bottom, as the core writes them.
	Buffer->Region = FUpdateTextureRegion2D(0, 0, 0, 0, Info.width, Info.height);
	Buffer->bInFlight.store(true);
	TSharedPtr<FPixelBuffer, ESPMode::ThreadSafe> Uploading = Buffer;
	FrameTexture->UpdateTextureRegions(0, 1, &Buffer->Region, Info.width * BytesPerPixel, BytesPerPixel,
		Buffer->Pixels.GetData(), [Uploading](uint8*, const FUpdateTextureRegion2D*) { Uploading->bInFlight.store(false); });

	OffsetSumMs += (static_cast<double>(HeardUntil) - static_cast<double>(Info.pts)) * 1000.0 / SampleRate;
	++OffsetCount;
	ShownFrameTimes.Add(FPlatformTime::Seconds());
	OnFrameShown.Broadcast(FrameTexture);
}

void UAvatarNpcComponent::RefreshStats()
{
	const double Now = FPlatformTime::Seconds();
	if (Now < NextStatsRefresh)
	{
		return;
	}
	NextStatsRefresh = Now + StatsRefreshSeconds;
	ShownFrameTimes.RemoveAll([Now](double Shown) { return Now - Shown > 1.0; });
	Stats.ShownFps = ShownFrameTimes.Num();
	if (OffsetCount > 0)
	{
		Stats.AvOffsetMs = OffsetSumMs / OffsetCount;
		OffsetSumMs = 0;
		OffsetCount = 0;
	}
	avb_stats Native = {};
	Native.struct_size = sizeof(Native);
	if (avb_session_get_stats(Session, &Native) != AVB_OK)
	{
		return;
	}
	Stats.State = static_cast<EAvatarSessionState>(Native.state);
	Stats.GeneratedFps = Native.generated_fps;
	Stats.FirstFrameLatencyMs = Native.first_frame_latency_ms;
	Stats.FramesReceived = Native.frames_received;
	Stats.FramesDropped = Native.frames_dropped;
	Stats.BufferedFrames = Native.buffered_frames;
	Stats.BufferedVoiceMs = Echo->BufferedSamples() * 1000.0 / SampleRate;
	Stats.Reconnects = Native.reconnects;
}

void UAvatarNpcComponent::ReportError(const FString& Message)
{
	UE_LOG(LogAvatarBackend, Warning, TEXT("%s"), *Message);
	OnError.Broadcast(Message);
}
