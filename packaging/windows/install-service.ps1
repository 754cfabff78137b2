# Installs (or repairs) the Cordon agent as a Windows service; run elevated.
# The work is done by platforms/windows/install.py (tested against a fake of the Windows API):
# %ProgramData%\Cordon with protected ACLs (SYSTEM/Administrators full, Users read config and
# state, nothing on logs), the service as LocalSystem running `"cordon.exe" run --config ...`,
# automatic (not delayed) start after the Base Filtering Engine, and recovery that restarts the
# agent on every failure (first at once), also when it exits with an error code.
param(
    [string]$Exe = "C:\Program Files\Cordon\cordon.exe",
    [string]$Python = "C:\Program Files\Cordon\python.exe",
    [switch]$NoStart
)
$ErrorActionPreference = "Stop"
$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw "install-service.ps1 must run elevated (as Administrator)"
}
$installArgs = @("-m", "platforms.windows.install", "--exe", $Exe)
if ($NoStart) { $installArgs += "--no-start" }
& $Python @installArgs
if ($LASTEXITCODE -ne 0) { throw "the Cordon installer failed (exit $LASTEXITCODE)" }
