"""The official Azure SDK for Python against `kvsync dev-vault`.

Run with the variables `kvsync dev-vault` prints exported (KVSYNC_DEV_VAULT_URL,
AZURE_AUTHORITY_HOST, AZURE_TENANT_ID, AZURE_CLIENT_ID, KVSYNC_CA_FILE):

    python3 tests/sdk/python_sdk_check.py

Exercises both credentials the dev vault stands in for (client secret and
workload identity), get (latest, pinned), set, list with paging, versions,
update attributes, a disabled secret and delete, and the certificate-backed
secrets run.sh seeds (contentType and value as Key Vault returns them).
"""
import base64
import os
import sys

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential, WorkloadIdentityCredential
from azure.keyvault.secrets import SecretClient

url = os.environ["KVSYNC_DEV_VAULT_URL"]
ca = os.environ["KVSYNC_CA_FILE"]
tenant = os.environ["AZURE_TENANT_ID"]
authority = os.environ["AZURE_AUTHORITY_HOST"]

# requests (under azure-core and msal) trusts REQUESTS_CA_BUNDLE.
os.environ["REQUESTS_CA_BUNDLE"] = ca

credentials = {
    "client secret": ClientSecretCredential(
        tenant, "sdk-check", "any-secret", authority=authority, disable_instance_discovery=True
    ),
    "workload identity": WorkloadIdentityCredential(
        tenant_id=tenant,
        client_id=os.environ["AZURE_CLIENT_ID"],
        token_file_path=os.environ["AZURE_FEDERATED_TOKEN_FILE"],
        authority=authority,
        disable_instance_discovery=True,
    ),
}

failures = 0


def check(what, ok):
    global failures
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures += 1


for label, credential in credentials.items():
    client = SecretClient(url, credential, verify_challenge_resource=False, connection_verify=ca)
    name = "sdk-" + label.replace(" ", "-")
    first = client.set_secret(name, "first", tags={"by": "sdk"})
    second = client.set_secret(name, "second")
    check(f"{label}: set returns versions", first.properties.version != second.properties.version)
    check(f"{label}: get latest", client.get_secret(name).value == "second")
    check(f"{label}: get pinned", client.get_secret(name, first.properties.version).value == "first")
    versions = list(client.list_properties_of_secret_versions(name))
    check(f"{label}: list versions", len(versions) == 2)
    for i in range(30):
        client.set_secret(f"page-{label.replace(' ', '-')}-{i:02d}", str(i))
    names = [p.name for p in client.list_properties_of_secrets()]
    check(f"{label}: list pages past 25", len([n for n in names if n.startswith("page-" + label.replace(" ", "-"))]) == 30)
    updated = client.update_secret_properties(name, second.properties.version, enabled=False, content_type="text/plain")
    check(f"{label}: update attributes", updated.enabled is False and updated.content_type == "text/plain")
    try:
        client.get_secret(name)
        check(f"{label}: disabled secret refused", False)
    except HttpResponseError as e:
        check(f"{label}: disabled secret refused", e.status_code == 403)
    try:
        client.get_secret("does-not-exist")
        check(f"{label}: missing secret is ResourceNotFoundError", False)
    except ResourceNotFoundError:
        check(f"{label}: missing secret is ResourceNotFoundError", True)
    pfx = client.get_secret("web-tls")
    check(
        f"{label}: a PFX-backed certificate secret",
        pfx.properties.content_type == "application/x-pkcs12" and base64.b64decode(pfx.value)[:1] == b"\x30",
    )
    pem = client.get_secret("api-tls")
    check(
        f"{label}: a PEM-backed certificate secret",
        pem.properties.content_type == "application/x-pem-file" and pem.value.startswith("-----BEGIN PRIVATE KEY-----"),
    )
    poller = client.begin_delete_secret(name)
    deleted = poller.result() if hasattr(poller, "result") else poller
    check(f"{label}: delete", deleted.name == name)

print(f"{sum(1 for _ in credentials) * 11 - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
