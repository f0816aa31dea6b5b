// The NPC's echoed voice as a procedural sound wave: the audio render thread pulls it out of the session's
// EchoPlayback, which counts what it hands out and so drives the A/V clock. Play it through any
// UAudioComponent (attenuation, submixes and concurrency apply as to any sound).
#pragma once

#include "CoreMinimal.h"
#include "Sound/SoundWaveProcedural.h"
#include "AvatarEchoSoundWave.generated.h"

namespace avatar_backend
{
class EchoPlayback;
}

UCLASS()
class AVATARBACKEND_API UAvatarEchoSoundWave : public USoundWaveProcedural
{
	GENERATED_BODY()

public:
	UAvatarEchoSoundWave(const FObjectInitializer& ObjectInitializer);

	/** Plays `Echo` (mono, at its session rate) from now on; nullptr plays silence. Game thread. */
	void SetEchoPlayback(TSharedPtr<avatar_backend::EchoPlayback, ESPMode::ThreadSafe> Echo);

	//~ USoundWaveProcedural: called on the audio render thread.
	virtual int32 OnGeneratePCMAudio(TArray<uint8>& OutAudio, int32 NumSamples) override;
	virtual Audio::EAudioMixerStreamDataFormat::Type GetGeneratedPCMDataFormat() const override;

private:
	FCriticalSection EchoLock;  // guards the pointer only; EchoPlayback locks its own state
	TSharedPtr<avatar_backend::EchoPlayback, ESPMode::ThreadSafe> EchoPlayback;
};
