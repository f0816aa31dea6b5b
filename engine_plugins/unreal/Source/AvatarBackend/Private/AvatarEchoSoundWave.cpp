#include "AvatarEchoSoundWave.h"

#include "Portable/AvatarEchoPlayback.h"

UAvatarEchoSoundWave::UAvatarEchoSoundWave(const FObjectInitializer& ObjectInitializer)
	: Super(ObjectInitializer)
{
	NumChannels = 1;
	Duration = INDEFINITELY_LOOPING_DURATION;
	bLooping = false;
	SoundGroup = SOUNDGROUP_Voice;
	// Keep generating while inaudible (distance, concurrency): the clock must not stop with the sound.
	VirtualizationMode = EVirtualizationMode::PlayWhenSilent;
}

void UAvatarEchoSoundWave::SetEchoPlayback(TSharedPtr<avatar_backend::EchoPlayback, ESPMode::ThreadSafe> Echo)
{
	if (Echo.IsValid())
	{
		SetSampleRate(Echo->SessionSampleRate());
	}
	FScopeLock Lock(&EchoLock);
	EchoPlayback = MoveTemp(Echo);
}

int32 UAvatarEchoSoundWave::OnGeneratePCMAudio(TArray<uint8>& OutAudio, int32 NumSamples)
{
	TSharedPtr<avatar_backend::EchoPlayback, ESPMode::ThreadSafe> Echo;
	{
		FScopeLock Lock(&EchoLock);
		Echo = EchoPlayback;
	}
	OutAudio.SetNumUninitialized(NumSamples * sizeof(float), EAllowShrinking::No);
	float* Samples = reinterpret_cast<float*>(OutAudio.GetData());
	if (!Echo.IsValid())
	{
		FMemory::Memzero(Samples, NumSamples * sizeof(float));
		return NumSamples;
	}
	// Mono at the session's rate: the mixer resamples to the device, so no rate conversion here.
	Echo->Read(Samples, NumSamples, 1, Echo->SessionSampleRate());
	return NumSamples;
}

Audio::EAudioMixerStreamDataFormat::Type UAvatarEchoSoundWave::GetGeneratedPCMDataFormat() const
{
	return Audio::EAudioMixerStreamDataFormat::Float;
}
