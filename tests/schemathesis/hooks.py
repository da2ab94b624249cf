"""Schemathesis hooks of the schema fuzzing run: the bearer tokens, and real test data for
the operations that random values cannot reach the success path of.

The server, its accounts and its data come from the environment (set by tests/tests/schema.rs,
or by hand for a longer run):

    KEYGATE_FUZZ_URL       the server, e.g. http://127.0.0.1:8080
    KEYGATE_FUZZ_ADMIN     an administrator's username (its password in KEYGATE_FUZZ_PASSWORD)
    KEYGATE_FUZZ_USER      another account's username (same password)
    KEYGATE_FUZZ_USER_ID   that account's id
    KEYGATE_FUZZ_OWN_ADDRESSES
                           when set, the hooks' own requests name an address of their own in
                           X-Forwarded-For (the server trusts 127.0.0.1 as a proxy in that run),
                           so that they spend none of the rate budget of the generated requests

Only positive (schema-valid) cases are given real data, and only some of them, so that
random values are still sent and negative cases stay negative.
"""

import os
import random

import requests
import schemathesis

URL = os.environ["KEYGATE_FUZZ_URL"].rstrip("/")
API = URL + "/api/v1"
ADMIN = os.environ["KEYGATE_FUZZ_ADMIN"]
USER = os.environ["KEYGATE_FUZZ_USER"]
USER_ID = os.environ["KEYGATE_FUZZ_USER_ID"]
PASSWORD = os.environ["KEYGATE_FUZZ_PASSWORD"]

OWN_ADDRESSES = bool(os.environ.get("KEYGATE_FUZZ_OWN_ADDRESSES"))

# A share of the schema-valid cases that get real data.
REAL_DATA = 0.5
# Hooks run inside Hypothesis's generation, which owns the module-level `random`.
RNG = random.Random()


def own_address():
    """Headers that give a hook's request an address of its own (in the documentation prefix,
    one /64 per request: the server counts IPv6 clients by /64), where
    KEYGATE_FUZZ_OWN_ADDRESSES asks for it."""
    if not OWN_ADDRESSES:
        return {}
    return {"X-Forwarded-For": f"2001:db8:{RNG.randrange(1 << 16):x}:{RNG.randrange(1 << 16):x}::1"}


def sign_in(identity):
    response = requests.post(
        API + "/auth/login",
        json={"identity": identity, "password": PASSWORD},
        headers=own_address(),
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def bearer(case, token):
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


@schemathesis.auth().skip_for(path="/api/v1/auth/logout")
class AdminToken:
    """The administrator's access token (signed in again when it is refused)."""

    def get(self, case, ctx):
        return sign_in(ADMIN)["access_token"]

    def set(self, case, data, ctx):
        bearer(case, data)


@schemathesis.auth(refresh_interval=None).apply_to(path="/api/v1/auth/logout")
class FreshSession:
    """Logout ends the session of its token: a new session for every call."""

    def get(self, case, ctx):
        return sign_in(ADMIN)["access_token"]

    def set(self, case, data, ctx):
        bearer(case, data)


def positive(case):
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive and RNG.random() < REAL_DATA


def admin_headers():
    return {"Authorization": "Bearer " + sign_in(ADMIN)["access_token"]}


def new_ticket():
    response = requests.post(
        API + "/auth/generate-ticket",
        json={"user_id": USER_ID, "reason": "schema fuzzing"},
        headers={**admin_headers(), **own_address()},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["data"]["ticket"]


@schemathesis.hook
def before_call(context, case, kwargs):
    if not positive(case):
        return
    path, method = case.operation.path, case.operation.method.upper()
    body = case.body if isinstance(case.body, dict) else None
    if path == "/api/v1/admin/users/{user_id}/unlock":
        case.path_parameters = {**case.path_parameters, "user_id": USER_ID}
    elif path == "/api/v1/public/auth-config/{tenant_id}":
        case.path_parameters = {**case.path_parameters, "tenant_id": "default"}
    elif (method, path) == ("POST", "/api/v1/auth/generate-ticket") and body is not None:
        body["user_id"] = USER_ID
        body.pop("tenant_id", None)
    elif (method, path) == ("POST", "/api/v1/auth/ticket/signin") and body is not None:
        body["ticket"] = new_ticket()
    elif (method, path) == ("POST", "/api/v1/auth/refresh") and body is not None:
        body["refresh_token"] = sign_in(USER)["refresh_token"]
    elif (method, path) == ("POST", "/api/v1/auth/login") and body is not None:
        body.update(identity=USER, password=PASSWORD)
        for field in ("password_transmission", "tenant_id", "captcha_provider", "captcha_token",
                      "captcha_challenge_id", "key_exchange_id", "client_pub_key", "key_id"):
            body.pop(field, None)
    elif (method, path) == ("PUT", "/api/v1/auth/me/password") and body is not None:
        # Past the field checks and the rate rules to the current password's verification,
        # which refuses it: the account keeps the password the other hooks sign in with.
        body.update(old_password="not the current password",
                    new_password=f"fuzzed new password {RNG.randrange(10**12)}")
        for field in ("password_transmission", "client_pub_key", "key_exchange_id", "key_id"):
            body.pop(field, None)
    elif (method, path) == ("POST", "/api/v1/auth/send-login-code") and body is not None:
        # A target nobody has: the same answer as for an account (in development mode the
        # code goes to the log).
        body.pop("phone", None)
        body["email"] = f"fuzz{RNG.randrange(10**9)}@example.com"
    # The default tenant instead of a random one, which does not exist.
    if body is not None:
        body.pop("tenant_id", None)
    if case.headers:
        case.headers.pop("X-Tenant-ID", None)
