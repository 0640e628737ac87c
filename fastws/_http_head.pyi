GUID: str

def accept_key(key: str) -> str: ...
def is_plain_key(key: str) -> bool: ...
def parse_plain_get(
    data: bytes | bytearray | memoryview,
    start: int,
    max_request_line: int,
    max_header_size: int,
    max_headers: int,
) -> tuple[int, str, list[tuple[str, str]], dict[str, list[str]]] | None: ...
