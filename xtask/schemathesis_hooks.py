"""schemathesis hooks for `cargo xtask schemathesis`.

ImportArchive (`POST /archive`) consumes `application/x-tar`, for which schemathesis has no
serializer: its generated bodies are sent as bytes, as for `application/octet-stream`.
"""

import schemathesis

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
