// The AvatarBackend module: loads the native client core where it is delay-loaded (Windows, macOS) and checks
// that its C ABI is the one this plugin was built against.
#pragma once

#include "Modules/ModuleManager.h"

DECLARE_LOG_CATEGORY_EXTERN(LogAvatarBackend, Log, All);

class FAvatarBackendModule : public IModuleInterface
{
public:
	virtual void StartupModule() override;
	virtual void ShutdownModule() override;

	/** True when libavatar_client is loaded and has this plugin's ABI version: sessions can start. */
	static bool IsNativeCoreAvailable();

private:
	void* NativeCoreHandle = nullptr;
	static bool bNativeCoreAvailable;
};
