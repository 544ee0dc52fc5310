"""storage=nixl: NVIDIA's NIXL transfer library, one backend over three media (storage.medium).

One module a seam:
- `settings`: NixlSettings, the keys of workload_configs/storage/nixl.yaml for every medium;
- `agent`: the environment NIXL and UCX need before they load, the import guard (one line naming
  what to install), a NIXL agent with its registered memory and transfers driven to DONE, and
  what UCX reported carried them (UCX_PROTO_INFO);
- `medium`: the `Medium` protocol the backend delegates its verbs to;
- `memory`, `file`, `obj`: one medium each (a tier of registered memory over the ranks; files
  through the POSIX plugin; objects through the OBJ plugin);
- `backend`: NixlBackend, the registered Backend.

NIXL itself is imported only when a backend is opened: listing the backends never needs it.
"""

from __future__ import annotations

from dlio_ext.storage.nixl.backend import NixlBackend
from dlio_ext.storage.nixl.settings import NixlSettings

__all__ = ["NixlBackend", "NixlSettings"]
