// An NPC that talks: its voice goes to the avatar backend, its face comes back into a UTexture2D and its
// echoed voice plays through a USoundWaveProcedural, with each frame shown when the voice reaches its pts.
// A thin layer over the native client core's C ABI (avatar_backend/avatar_client.h), which does the transport,
// Opus, JPEG, reconnects and the A/V clock.
//
// Threads: the session is polled on the game thread in TickComponent (events, echoed voice, the due frame,
// uploaded with UpdateTextureRegions). The audio render thread reads the echoed voice (UAvatarEchoSoundWave)
// and so advances the clock; the microphone's capture thread pushes voice straight to the core. The core's
// functions may be called from any thread and never block on the network.
#pragma once

#include "CoreMinimal.h"
#include "Components/ActorComponent.h"
#include "AvatarNpcComponent.generated.h"

class UAudioComponent;
class USoundWave;
class UTexture2D;
class UAvatarEchoSoundWave;
struct avb_client;
struct avb_session;
namespace Audio
{
class FAudioCapture;
}
namespace avatar_backend
{
class EchoPlayback;
class VoiceChunker;
}

/** AVB_STATE_*: the session's connection state. */
UENUM(BlueprintType)
enum class EAvatarSessionState : uint8
{
	None = 0,
	Opening = 1,
	Live = 2,
	Reconnecting = 3,
	Closed = 4,
};

/** The numbers of a session, for an on-screen overlay or telemetry. */
USTRUCT(BlueprintType)
struct AVATARBACKEND_API FAvatarNpcStats
{
	GENERATED_BODY()

	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") EAvatarSessionState State = EAvatarSessionState::None;
	/** Frames shown per second (last second). */
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") float ShownFps = 0;
	/** Frames the server generated per second (its latest SessionStats). */
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") float GeneratedFps = 0;
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") float FirstFrameLatencyMs = 0;
	/** Mean delay of the shown frames behind the heard voice, last half second. */
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") float AvOffsetMs = 0;
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") int64 FramesReceived = 0;
	/** Evicted from the core's buffer or skipped by the A/V clock. */
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") int64 FramesDropped = 0;
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") int32 BufferedFrames = 0;
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") float BufferedVoiceMs = 0;
	UPROPERTY(BlueprintReadOnly, Category = "Avatar Backend") int32 Reconnects = 0;
};

DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FAvatarSessionStateChanged, EAvatarSessionState, State);
DECLARE_DYNAMIC_MULTICAST_DELEGATE(FAvatarUtteranceComplete);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FAvatarInterrupted, int64, ReplaceFromPts);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FAvatarServerEvent, int32, EventCode, const FString&, Message);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FAvatarError, const FString&, Message);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FAvatarFrameShown, UTexture2D*, Texture);

UCLASS(ClassGroup = (AvatarBackend), meta = (BlueprintSpawnableComponent))
class AVATARBACKEND_API UAvatarNpcComponent : public UActorComponent
{
	GENERATED_BODY()

public:
	UAvatarNpcComponent();

	// --- server and NPC ---

	/** host:port of avatar-backend serve. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|Server") FString ServerTarget = TEXT("127.0.0.1:50051");
	/** Sent as "authorization: Bearer <key>"; empty for none. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|Server") FString ApiKey;
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|Server") bool bUseTls = false;
	/** The NPC: its memory (how it looked and moved) persists across sessions and server restarts. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") FString NpcId = TEXT("npc-1");
	/** The registered character the NPC looks like; required for a new NPC. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") FString CharacterId;
	/** 0: the NPC's own size, or the model's default. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") int32 Width = 0;
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") int32 Height = 0;
	/** 0: the model's. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") int32 Fps = 0;
	/** The session clock, of pushed and echoed voice: 48000 or 16000. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") int32 SampleRate = 48000;
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") bool bResetMemory = false;
	/** After a dropped connection the core reopens the stream with the NPC's resume token. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") bool bReconnect = true;
	/** With bReconnect: how long the core keeps reopening a dropped stream before the session closes with its last
	 * error (OnSessionStateChanged, OnError); 0: it never gives up. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC", meta = (ClampMin = "0")) int32 ReconnectTimeoutMs = 0;
	/** Decoded frames the core holds; beyond it the oldest go (0: 96). */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") int32 MaxBufferedFrames = 0;
	/** How strongly emotions and actions show: the prompt guidance factor (0: the server's; else 1 = off or more:
	 * higher shows them sooner and clearer, at some cost in lip sync; between 0 and 1 the session is refused). */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC", meta = (ClampMin = "0.0")) float PromptGuidance = 0.0f;
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|NPC") bool bStartOnBeginPlay = true;

	// --- voice output ---

	/** Plays the echoed voice; when empty, one is created on the owner (attach it to the NPC's head for 3D). */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|Audio") TObjectPtr<UAudioComponent> VoiceAudioComponent;
	/** Audio handed to the mixer that the player has not heard yet (mixer buffers, the device); subtracted
	 * from the clock. Depends on the platform's audio settings (buffer size x buffers to queue). */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Avatar Backend|Audio") float OutputLatencyMs = 60.f;

	// --- events (game thread) ---

	UPROPERTY(BlueprintAssignable, Category = "Avatar Backend") FAvatarSessionStateChanged OnSessionStateChanged;
	/** All voice of an utterance has been generated. */
	UPROPERTY(BlueprintAssignable, Category = "Avatar Backend") FAvatarUtteranceComplete OnUtteranceComplete;
	/** An interrupt was answered: the new (listening) video starts at ReplaceFromPts. */
	UPROPERTY(BlueprintAssignable, Category = "Avatar Backend") FAvatarInterrupted OnInterrupted;
	/** Other in-band events: EventCode of the contract (unknown emotion or action, audio gap, draining ...). */
	UPROPERTY(BlueprintAssignable, Category = "Avatar Backend") FAvatarServerEvent OnServerEvent;
	UPROPERTY(BlueprintAssignable, Category = "Avatar Backend") FAvatarError OnError;
	/** A new frame is in FrameTexture (bind it to a material parameter once; the texture object stays the same
	 * while the size does). */
	UPROPERTY(BlueprintAssignable, Category = "Avatar Backend") FAvatarFrameShown OnFrameShown;

	// --- session ---

	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") bool StartSession();
	/** Ends the session normally: the server saves the NPC's memory; the resume token arrives with the end. */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void StopSession();
	UFUNCTION(BlueprintPure, Category = "Avatar Backend") bool IsSessionOpen() const { return Session != nullptr; }

	// --- voice input ---

	/** Speaks a sound wave as one utterance, decoded and sent at once (as TTS: the NPC starts within about a
	 * second). Its compressed data must be loaded (Loading Behavior: Force Inline or Retain On Load). */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") bool SpeakSoundWave(USoundWave* SoundWave);
	/** Voice from a script (a TTS plugin): interleaved float samples at any rate. Game thread. */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void PushVoice(const TArray<float>& Samples, int32 SourceSampleRate, int32 NumChannels);
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void EndUtterance();
	/** Streams the default capture device (the AudioCapture module) as the NPC's voice, at real-time pace. */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") bool StartMicrophone();
	/** Stops the microphone and ends the utterance. */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void StopMicrophone();

	// --- control ---

	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void SetEmotion(const FString& Emotion, float Intensity = 1.f);
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void PlayAction(const FString& Preset);
	/** As SetEmotion, from the block that starts nearest to voice sample AtVoiceSample, for TTS word timings:
	 * GetVoiceSamplesSent before speaking the line plus the word's offset in it (seconds x SampleRate). A point
	 * already on video applies from the next block; an interrupt cancels the events not reached yet. */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void SetEmotionAtVoiceSample(const FString& Emotion, float Intensity, int64 AtVoiceSample);
	/** As PlayAction, from the block that starts nearest to voice sample AtVoiceSample (see SetEmotionAtVoiceSample). */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void PlayActionAtVoiceSample(const FString& Preset, int64 AtVoiceSample);
	/** The voice sent so far on the session, in samples at SampleRate (0 without a session): the count the timed
	 * events take. Exactly where the next line starts when read before SpeakSoundWave or a line's first
	 * PushVoice; within a line the voice still being chunked (under 20 ms) is not in it yet. */
	UFUNCTION(BlueprintPure, Category = "Avatar Backend") int64 GetVoiceSamplesSent() const;
	/** Stop talking now; OnInterrupted follows. */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void Interrupt();
	/** True while the player speaks: the NPC listens instead of idling. */
	UFUNCTION(BlueprintCallable, Category = "Avatar Backend") void SetListening(bool bListening);

	// --- outputs ---

	UFUNCTION(BlueprintPure, Category = "Avatar Backend") UTexture2D* GetFrameTexture() const { return FrameTexture; }
	UFUNCTION(BlueprintPure, Category = "Avatar Backend") FAvatarNpcStats GetStats() const { return Stats; }
	/** The NPC's resume token from the last session that ended. */
	UFUNCTION(BlueprintPure, Category = "Avatar Backend") FString GetLastResumeToken() const { return LastResumeToken; }

	virtual void TickComponent(float DeltaTime, ELevelTick TickType, FActorComponentTickFunction* ThisTickFunction) override;

protected:
	virtual void BeginPlay() override;
	virtual void EndPlay(const EEndPlayReason::Type EndPlayReason) override;

private:
	struct FPixelBuffer;

	void DestroySession();
	void PollEvents();
	void PollEchoedVoice();
	void ShowDueFrame(float DeltaTime);
	void RefreshStats();
	void ReportError(const FString& Message);

	avb_client* Client = nullptr;
	avb_session* Session = nullptr;
	TSharedPtr<avatar_backend::EchoPlayback, ESPMode::ThreadSafe> Echo;
	TUniquePtr<avatar_backend::VoiceChunker> GameThreadChunker;
	TUniquePtr<avatar_backend::VoiceChunker> MicrophoneChunker;  // the capture thread's only
	TUniquePtr<Audio::FAudioCapture> Microphone;
	TArray<int16> EchoedVoice;
	// Two pixel buffers: the render thread reads one (UpdateTextureRegions) while the next frame is polled into
	// the other; a frame is skipped, never torn, when both are busy.
	TArray<TSharedPtr<FPixelBuffer, ESPMode::ThreadSafe>> PixelBuffers;

	UPROPERTY(Transient) TObjectPtr<UTexture2D> FrameTexture;
	UPROPERTY(Transient) TObjectPtr<UAvatarEchoSoundWave> EchoSoundWave;

	FAvatarNpcStats Stats;
	FString LastResumeToken;
	double CloseDeadline = -1;
	double NextStatsRefresh = 0;
	double OffsetSumMs = 0;
	int32 OffsetCount = 0;
	TArray<double> ShownFrameTimes;
};
