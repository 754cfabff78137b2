"""Windows as a service host (not a backend; the backend is platforms.windivert):

  abi.py      the documented constants and the values the seam passes (plain Python)
  winapi.py   the thin OS-API seam: advapi32/kernel32 through ctypes, loaded only on Windows
  acl.py      the security descriptors (SDDL) of the pipe and of %ProgramData%\\Cordon, and
              which token groups count for an access check
  pipe.py     the named-pipe transport of the control channel (server and client)
  service.py  the Service Control Manager protocol for `cordon run`
  install.py  the installer: service, recovery actions, start type, directory ACLs

Everything here talks to the OS only through a WinApi object, so tests drive it with a fake
of that object (tests/unit/fake_winapi.py) and import works on Linux.
"""
