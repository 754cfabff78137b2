# Installs the Cordon agent as a Windows service. WinDivert filters live only as long as the
# agent's handles: the service must restart at once if it dies, and re-applies before anything else.
param([string]$Exe = "C:\Program Files\Cordon\cordon.exe")
$ErrorActionPreference = "Stop"
sc.exe create Cordon binPath= "`"$Exe`" run" start= auto DisplayName= "Cordon endpoint isolation agent" | Out-Null
sc.exe description Cordon "Isolates this host on request of the incident responder." | Out-Null
# Restart immediately on every failure; reset the failure count after a day.
sc.exe failure Cordon reset= 86400 actions= restart/0/restart/0/restart/0 | Out-Null
sc.exe failureflag Cordon 1 | Out-Null
sc.exe start Cordon | Out-Null
