"""Who may do what on Windows, as security descriptors (SDDL) and token groups.

DESIGN §7/§8: SYSTEM and Administrators change state, Users read status; the state and
config are readable by any local user (like /var/lib/cordon and /etc/cordon), the logs are
not (like /var/log/cordon, 0750). Every DACL is protected (`P`): nothing is inherited from
%ProgramData%, whose default ACL lets Users create folders and files.
"""
from __future__ import annotations

SID_SYSTEM = "S-1-5-18"
SID_ADMINISTRATORS = "S-1-5-32-544"
SID_USERS = "S-1-5-32-545"

# Named-pipe rights (winnt.h). FILE_APPEND_DATA is FILE_CREATE_PIPE_INSTANCE on a pipe: whoever
# holds it can add an instance of our pipe and answer our clients, so Users never get it.
FILE_READ_DATA = 0x0001
FILE_WRITE_DATA = 0x0002
FILE_CREATE_PIPE_INSTANCE = 0x0004
FILE_READ_EA = 0x0008
FILE_READ_ATTRIBUTES = 0x0080
READ_CONTROL = 0x00020000
SYNCHRONIZE = 0x00100000

# Users may connect, send one request and read its reply; the server decides per command.
PIPE_USERS_ACCESS = (FILE_READ_DATA | FILE_WRITE_DATA | FILE_READ_EA | FILE_READ_ATTRIBUTES
                     | READ_CONTROL | SYNCHRONIZE)
# What a client asks for when it opens the pipe (GENERIC_WRITE would include
# FILE_CREATE_PIPE_INSTANCE, which Users are not granted).
PIPE_CLIENT_ACCESS = FILE_READ_DATA | FILE_WRITE_DATA | FILE_READ_ATTRIBUTES | SYNCHRONIZE

# No owner in it: the creator (the service, SYSTEM) owns the pipe.
PIPE_SDDL = f"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;0x{PIPE_USERS_ACCESS:x};;;BU)"

# %ProgramData%\Cordon and its subdirectories (owner Administrators, so a folder a user
# created there before the install does not stay theirs).
_FULL = "(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"
READABLE_DIR_SDDL = f"O:BAD:PAI{_FULL}(A;OICI;FR;;;BU)"
PRIVATE_DIR_SDDL = f"O:BAD:PAI{_FULL}"

# TOKEN_GROUPS attributes (winnt.h)
SE_GROUP_ENABLED = 0x00000004
SE_GROUP_USE_FOR_DENY_ONLY = 0x00000010


def sids_in_force(groups: list[tuple[str, int]]) -> frozenset[str]:
    """The group SIDs an access check grants with: enabled and not deny-only (a UAC-filtered
    administrator holds Administrators deny-only, so it reads like a user)."""
    return frozenset(sid for sid, attrs in groups
                     if attrs & SE_GROUP_ENABLED and not attrs & SE_GROUP_USE_FOR_DENY_ONLY)
