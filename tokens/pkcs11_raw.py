"""The few PKCS#11 calls python-pkcs11 0.10.1 cannot make for us, through ctypes.

* C_Login/C_Logout: python-pkcs11's own login loses the session handle when
  the PIN is wrong (see pkcs11_token's module docstring).
* C_GenerateKey with an array attribute (CKA_UNWRAP_TEMPLATE): python-pkcs11
  cannot pack CK_ATTRIBUTE arrays. The wrap key needs one so that whatever it
  unwraps comes out sensitive and not extractable (DESIGN.md, wrapped mode).

This runs on the module python-pkcs11 has already loaded and initialised:
dlopen of the same file returns the same handle, so the same function table
and library state. Callers hold pkcs11_token.LIBRARY_LOCK around every call.
Every buffer handed to the library has a fixed upper size (limits below).
"""

from __future__ import annotations

import ctypes
from typing import Union

CK_ULONG = ctypes.c_ulong
CK_BBOOL = ctypes.c_ubyte

CKR_OK = 0x000
CKA_UNWRAP_TEMPLATE = 0x40000212
CKF_ARRAY_ATTRIBUTE = 0x40000000

# Limits: a template never needs more than a few dozen attributes, no scalar
# value here is longer than a label, and one level of nesting is all the
# standard uses (an attribute array inside a template).
MAX_TEMPLATE_ATTRIBUTES = 32
MAX_VALUE_BYTES = 256
MAX_PIN_BYTES = 255  # SoftHSM's own maximum PIN length

# The first entries of CK_FUNCTION_LIST, in the order of the standard
# (v2.40, also the start of the 3.x lists); we stop at the last one we call.
_FUNCTION_NAMES = (
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
)


class _FunctionListPrefix(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)] + [
        (name, ctypes.c_void_p) for name in _FUNCTION_NAMES
    ]


class _Attribute(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", CK_ULONG)]


class _Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", CK_ULONG)]


_C_LOGIN = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG)
_C_LOGOUT = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG)
_C_GENERATE_KEY = ctypes.CFUNCTYPE(
    CK_ULONG,
    CK_ULONG,
    ctypes.POINTER(_Mechanism),
    ctypes.POINTER(_Attribute),
    CK_ULONG,
    ctypes.POINTER(CK_ULONG),
)

# A template value: bool (CK_BBOOL), int (CK_ULONG), bytes/str (byte string),
# or, for an array attribute, a nested list of (type, value) pairs.
Value = Union[bool, int, bytes, str, "Template"]
Template = list[tuple[int, Value]]


class RawError(Exception):
    """A call the module refused; `rv` is its CK_RV."""

    def __init__(self, function: str, rv: int):
        super().__init__(f"{function} failed (CKR 0x{rv:x})")
        self.rv = rv


class RawModule:
    """C_Login, C_Logout and C_GenerateKey on a module python-pkcs11 already loaded."""

    def __init__(self, real_path: str):
        dll = ctypes.CDLL(real_path)
        table = ctypes.POINTER(_FunctionListPrefix)()
        rv = dll.C_GetFunctionList(ctypes.byref(table))
        if rv != CKR_OK or not table:
            raise RawError("C_GetFunctionList", rv)
        functions = table.contents
        self._dll = dll  # keeps the library referenced while we hold its functions
        self._login = _C_LOGIN(functions.C_Login)
        self._logout = _C_LOGOUT(functions.C_Logout)
        self._generate_key = _C_GENERATE_KEY(functions.C_GenerateKey)

    def login(self, session_handle: int, user_type: int, pin: str) -> int:
        """C_Login; returns the CK_RV (the caller words the error)."""
        pin_bytes = pin.encode("utf-8")
        if len(pin_bytes) > MAX_PIN_BYTES:
            return 0x0A2  # CKR_PIN_LEN_RANGE, without handing the module an oversized buffer
        return self._login(session_handle, user_type, pin_bytes, len(pin_bytes))

    def logout(self, session_handle: int) -> int:
        return self._logout(session_handle)

    def generate_key(self, session_handle: int, mechanism: int, template: Template) -> int:
        """C_GenerateKey with a mechanism without parameters; returns the new object's handle."""
        keep: list = []  # every buffer the template points into, alive until the call returns
        attributes, count = _pack_template(template, keep, depth=0)
        mech = _Mechanism(mechanism, None, 0)
        handle = CK_ULONG(0)
        rv = self._generate_key(session_handle, ctypes.byref(mech), attributes, count, ctypes.byref(handle))
        if rv != CKR_OK:
            raise RawError("C_GenerateKey", rv)
        return handle.value


def _pack_template(template: Template, keep: list, *, depth: int):
    if not 0 < len(template) <= MAX_TEMPLATE_ATTRIBUTES:
        raise ValueError(f"a template holds 1 to {MAX_TEMPLATE_ATTRIBUTES} attributes, not {len(template)}")
    array = (_Attribute * len(template))()
    keep.append(array)
    for slot, (attribute_type, value) in zip(array, template, strict=True):
        buffer, length = _pack_value(attribute_type, value, keep, depth)
        slot.type, slot.pValue, slot.ulValueLen = attribute_type, ctypes.cast(buffer, ctypes.c_void_p), length
    return array, len(template)


def _pack_value(attribute_type: int, value: Value, keep: list, depth: int):
    if isinstance(value, list):
        if depth > 0 or not attribute_type & CKF_ARRAY_ATTRIBUTE:
            raise ValueError(f"attribute 0x{attribute_type:x} cannot hold a template here")
        inner, count = _pack_template(value, keep, depth=depth + 1)
        return inner, count * ctypes.sizeof(_Attribute)
    if isinstance(value, bool):  # before int: bool is an int in Python
        buffer = CK_BBOOL(1 if value else 0)
    elif isinstance(value, int):
        buffer = CK_ULONG(value)
    else:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if not 0 < len(data) <= MAX_VALUE_BYTES:
            raise ValueError(
                f"attribute 0x{attribute_type:x}: value of 1 to {MAX_VALUE_BYTES} bytes expected"
            )
        buffer = ctypes.create_string_buffer(data, len(data))
    keep.append(buffer)
    return ctypes.pointer(buffer), ctypes.sizeof(buffer)
