from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterAdapterRequest(_message.Message):
    __slots__ = ("model", "name", "source", "replace")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    source: str
    replace: bool
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., source: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class RegisteredAdapter(_message.Message):
    __slots__ = ("model", "name", "source", "lora_id", "registered_at_unix_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LORA_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    source: str
    lora_id: int
    registered_at_unix_ms: int
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., source: _Optional[str] = ..., lora_id: _Optional[int] = ..., registered_at_unix_ms: _Optional[int] = ...) -> None: ...

class RegisterAdapterResponse(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: RegisteredAdapter
    def __init__(self, adapter: _Optional[_Union[RegisteredAdapter, _Mapping]] = ...) -> None: ...

class UnregisterAdapterRequest(_message.Message):
    __slots__ = ("model", "name")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class UnregisterAdapterResponse(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: RegisteredAdapter
    def __init__(self, adapter: _Optional[_Union[RegisteredAdapter, _Mapping]] = ...) -> None: ...
