// ZITADEL's own TypeScript clients against the emulator, all on the issuer's
// one port: @zitadel/node (v1 ManagementService over gRPC, nice-grpc /
// grpc-js) and @zitadel/client (v2 UserService over gRPC with its server
// transport; Connect binary and JSON over HTTP/2 and HTTP/1.1 with
// connect-node).  Run by tests/test_ts_clients.py, which starts the emulator
// and passes EMULATOR_JSON: {issuer, adminKeyFile, users: {v1, v2}, descriptors}.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { generateKeyPairSync } from "node:crypto";

import { createAccessTokenInterceptor, createManagementClient } from "@zitadel/node/dist/api/index.js";
import { ServiceAccount } from "@zitadel/node/dist/credentials/index.js";
import { KeyType } from "@zitadel/node/dist/api/generated/zitadel/auth_n_key.js";
import { createServerTransport } from "@zitadel/client/node";
import { createUserServiceClient } from "@zitadel/client/v2";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createRegistry } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { file_zitadel_user_v2_user_service, UserService } from "@zitadel/proto/zitadel/user/v2/user_service_pb.js";
import { file_zitadel_management } from "@zitadel/proto/zitadel/management_pb.js";
import { file_zitadel_org_v2_org_service } from "@zitadel/proto/zitadel/org/v2/org_service_pb.js";
import { file_zitadel_webkey_v2_webkey_service } from "@zitadel/proto/zitadel/webkey/v2/webkey_service_pb.js";

const emu = JSON.parse(readFileSync(process.env.EMULATOR_JSON, "utf8"));
const issuer = emu.issuer;
const inDays = (days) => new Date(Date.now() + days * 86400_000);
const admin = ServiceAccount.fromJson(JSON.parse(readFileSync(emu.adminKeyFile, "utf8")));
const adminToken = await admin.authenticate(issuer, { apiAccess: true });

const grpcCode = { INVALID_ARGUMENT: 3, NOT_FOUND: 5, UNAUTHENTICATED: 16 };

// nice-grpc's ClientError: .code, .details (the message); connect's ConnectError:
// .code, .rawMessage, .details (the google.rpc.Status details, here ZITADEL's ErrorDetail)
async function rejectsWith(promise, code, pattern, detailType) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.code, code, `code ${err.code}: ${err.message}`);
    assert.match(err instanceof ConnectError ? err.rawMessage : err.details, pattern);
    if (detailType) assert.deepEqual(err.details.map((d) => d.type), [detailType]);
    return true;
  });
}

async function userinfo(token) {
  return (await fetch(`${issuer}/oidc/v1/userinfo`, { headers: { authorization: `Bearer ${token}` } })).status;
}

function localKeyPair() {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return {
    publicPem: publicKey.export({ type: "spki", format: "pem" }),
    privatePem: privateKey.export({ type: "pkcs8", format: "pem" }),
  };
}

// --- v1: @zitadel/node, gRPC on the issuer's port ------------------------------------

const v1 = createManagementClient(issuer, createAccessTokenInterceptor(adminToken));

test("v1: the key file's token exchange gives a token the ManagementService accepts", async () => {
  const { org } = await v1.getMyOrg({});
  assert.equal(org.name, "acme");
});

test("v1: AddMachineKey -> its key file authenticates -> listed -> RemoveMachineKey -> gone and refused", async () => {
  const userId = emu.users.v1;
  const added = await v1.addMachineKey({ userId, type: KeyType.KEY_TYPE_JSON, expirationDate: inDays(30) });
  const keyFile = JSON.parse(added.keyDetails.toString("utf8"));
  assert.equal(keyFile.keyId, added.keyId);
  const token = await ServiceAccount.fromJson(keyFile).authenticate(issuer, { apiAccess: true });
  assert.equal(await userinfo(token), 200);

  const listed = await v1.listMachineKeys({ userId });
  assert.ok(listed.result.some((k) => k.id === added.keyId));

  await v1.removeMachineKey({ userId, keyId: added.keyId });
  const after = await v1.listMachineKeys({ userId });
  assert.ok(!after.result.some((k) => k.id === added.keyId));
  await assert.rejects(ServiceAccount.fromJson(keyFile).authenticate(issuer, { apiAccess: true }));
});

test("v1: a locally generated public key: no key details come back", async () => {
  const pair = localKeyPair();
  const added = await v1.addMachineKey({
    userId: emu.users.v1, type: KeyType.KEY_TYPE_JSON, expirationDate: inDays(30),
    publicKey: Buffer.from(pair.publicPem),
  });
  assert.equal(added.keyDetails.length, 0);
  const keyFile = { type: "serviceaccount", keyId: added.keyId, key: pair.privatePem, userId: emu.users.v1 };
  const token = await ServiceAccount.fromJson(keyFile).authenticate(issuer, { apiAccess: true });
  assert.equal(await userinfo(token), 200);
  await v1.removeMachineKey({ userId: emu.users.v1, keyId: added.keyId });
});

test("v1: AddPersonalAccessToken -> the PAT works -> listed -> removed -> refused", async () => {
  const userId = emu.users.v1;
  const added = await v1.addPersonalAccessToken({ userId, expirationDate: inDays(30) });
  assert.equal(await userinfo(added.token), 200);
  assert.ok((await v1.listPersonalAccessTokens({ userId })).result.some((p) => p.id === added.tokenId));
  await v1.removePersonalAccessToken({ userId, tokenId: added.tokenId });
  assert.ok(!(await v1.listPersonalAccessTokens({ userId })).result.some((p) => p.id === added.tokenId));
  assert.equal(await userinfo(added.token), 401);
});

test("v1: errors carry ZITADEL's codes and messages", async () => {
  await rejectsWith(v1.getUserByID({ id: "404" }), grpcCode.NOT_FOUND, /User could not be found/);
  await rejectsWith(v1.addMachineKey({ userId: emu.users.v1, type: KeyType.KEY_TYPE_UNSPECIFIED }),
    grpcCode.INVALID_ARGUMENT, /^invalid AddMachineKeyRequest\.Type: /);
  await rejectsWith(v1.listUserMetadata({ id: emu.users.v1, queries: [{}] }), grpcCode.INVALID_ARGUMENT,
    /^invalid ListUserMetadataRequest\.Queries\[0\]: embedded message failed validation \| caused by: invalid MetadataQuery\.Query: value is required$/);
  const anonymous = createManagementClient(issuer);
  await rejectsWith(anonymous.getMyOrg({}), grpcCode.UNAUTHENTICATED, /auth header missing/);
});

test("v1: ListUsers takes every one of ZITADEL's query kinds", async () => {
  const found = await v1.listUsers({ queries: [
    { emailQuery: { emailAddress: "nobody@example.com", method: 0 } },
    { notQuery: { query: { stateQuery: { state: 2 } } } },
  ] });
  assert.equal(found.result.length, 0);
  const byName = await v1.listUsers({ queries: [{ orQuery: { queries: [
    { userNameQuery: { userName: "svc-billing", method: 0 } },
    { inUserEmailsQuery: { userEmails: ["nobody@example.com"] } },
  ] } }] });
  assert.deepEqual(byName.result.map((u) => u.userName), ["svc-billing"]);
});

// --- v2: @zitadel/client, gRPC (server transport) on the issuer's port -----------------

const v2 = createUserServiceClient(createServerTransport(adminToken, { baseUrl: issuer, httpVersion: "2" }));
const byUser = (id) => [{ filter: { case: "userIdFilter", value: { id } } }];

test("v2: AddKey (local key) -> its key file authenticates -> listed -> RemoveKey -> gone", async () => {
  const userId = emu.users.v2;
  const pair = localKeyPair();
  const added = await v2.addKey({ userId, expirationDate: timestampFromDate(inDays(30)),
                                  publicKey: Buffer.from(pair.publicPem) });
  assert.equal(added.keyContent.length, 0);
  const keyFile = { type: "serviceaccount", keyId: added.keyId, key: pair.privatePem, userId };
  const token = await ServiceAccount.fromJson(keyFile).authenticate(issuer, { apiAccess: true });
  assert.equal(await userinfo(token), 200);

  assert.ok((await v2.listKeys({ filters: byUser(userId) })).result.some((k) => k.id === added.keyId));
  await v2.removeKey({ userId, keyId: added.keyId });
  assert.ok(!(await v2.listKeys({ filters: byUser(userId) })).result.some((k) => k.id === added.keyId));
});

test("v2: AddKey without a public key returns the key file", async () => {
  const added = await v2.addKey({ userId: emu.users.v2, expirationDate: timestampFromDate(inDays(30)) });
  const keyFile = JSON.parse(Buffer.from(added.keyContent).toString("utf8"));
  assert.equal(keyFile.keyId, added.keyId);
  const token = await ServiceAccount.fromJson(keyFile).authenticate(issuer, { apiAccess: true });
  assert.equal(await userinfo(token), 200);
  await v2.removeKey({ userId: emu.users.v2, keyId: added.keyId });
});

test("v2: AddPersonalAccessToken -> works -> listed -> RemovePersonalAccessToken -> refused", async () => {
  const userId = emu.users.v2;
  const added = await v2.addPersonalAccessToken({ userId, expirationDate: timestampFromDate(inDays(30)) });
  assert.equal(await userinfo(added.token), 200);
  assert.ok((await v2.listPersonalAccessTokens({ filters: byUser(userId) })).result.some((p) => p.id === added.tokenId));
  await v2.removePersonalAccessToken({ userId, tokenId: added.tokenId });
  assert.equal(await userinfo(added.token), 401);
});

test("v2: errors carry ZITADEL's codes and PGV messages", async () => {
  await rejectsWith(v2.removeKey({ userId: emu.users.v2, keyId: "404" }), Code.NotFound, /\(COMMAND-\w+\)$/,
    "zitadel.v1.ErrorDetail");
  await rejectsWith(v2.addKey({ userId: emu.users.v2 }), Code.InvalidArgument,
    /^invalid AddKeyRequest\.ExpirationDate: value is required$/);
  await rejectsWith(v2.listUsers({ queries: [{ query: { case: "userNameQuery", value: { userName: "" } } }] }),
    Code.InvalidArgument, /^invalid ListUsersRequest\.Queries\[0\]: embedded message failed validation \| caused by: invalid SearchQuery\.UserNameQuery: embedded message failed validation \| caused by: invalid UserNameQuery\.UserName: value length must be between 1 and 200 runes, inclusive$/);
  const anonymous = createUserServiceClient(createServerTransport("not-a-token", { baseUrl: issuer, httpVersion: "2" }));
  await rejectsWith(anonymous.listKeys({}), Code.Unauthenticated, /./);
});

test("v2: ListUsers accepts in_user_emails and phone queries", async () => {
  const found = await v2.listUsers({ queries: [
    { query: { case: "inUserEmailsQuery", value: { userEmails: ["nobody@example.com"] } } }] });
  assert.equal(found.result.length, 0);
  const phone = await v2.listUsers({ queries: [{ query: { case: "phoneQuery", value: { number: "+41" } } }] });
  assert.equal(phone.result.length, 0);
});

// --- v2 over Connect (connect-node) on the same port -------------------------------------

const bearer = (token) => (next) => (req) => { req.header.set("Authorization", `Bearer ${token}`); return next(req); };
for (const [httpVersion, useBinaryFormat] of [["2", true], ["2", false], ["1.1", true], ["1.1", false]]) {
  test(`v2 over Connect, HTTP/${httpVersion}, ${useBinaryFormat ? "application/proto" : "application/json"}`, async () => {
    const client = createClient(UserService, createConnectTransport({
      baseUrl: issuer, httpVersion, useBinaryFormat, interceptors: [bearer(adminToken)] }));
    const user = await client.getUserByID({ userId: emu.users.v2 });
    assert.equal(user.user.userId, emu.users.v2);
    await assert.rejects(client.removeKey({ userId: emu.users.v2, keyId: "404" }),
      (err) => err instanceof ConnectError && err.code === Code.NotFound);
  });
}

// --- the emulator's copy of the descriptors is ZITADEL's ---------------------------------

test("every message the emulator reads or writes matches @zitadel/proto field by field", () => {
  const files = []; const seen = new Set();
  const add = (f) => { if (!seen.has(f.name)) { seen.add(f.name); files.push(f); f.dependencies.forEach(add); } };
  add(file_zitadel_user_v2_user_service); add(file_zitadel_management); add(file_zitadel_org_v2_org_service);
  add(file_zitadel_webkey_v2_webkey_service);
  const registry = createRegistry(...files);
  const ours = JSON.parse(readFileSync(emu.descriptors, "utf8"));
  const v1Packages = ["zitadel.management.v1.", "zitadel.user.v1.", "zitadel.metadata.v1.", "zitadel.v1."];
  let compared = 0;
  for (const [name, fields] of Object.entries(ours)) {
    const short = name.split(".").pop();
    const candidates = name.startsWith("zitadel.management.v1.") ? v1Packages.map((p) => p + short) : [name];
    const real = candidates.map((n) => registry.getMessage(n)).find(Boolean);
    assert.ok(real, `${name} not in @zitadel/proto`);
    for (const f of fields) {
      const r = real.fields.find((x) => x.name === f.name);
      assert.ok(r, `${name}.${f.name} not in ${real.typeName}`);
      const realType = r.message ? r.message.name : r.enum ? r.enum.name : r.proto.type;
      assert.deepEqual([r.number, r.proto.type, realType, r.fieldKind === "list", r.oneof?.name ?? null],
        [f.number, f.type, f.type_name ?? f.type, f.repeated, f.oneof], `${name}.${f.name}`);
      compared += 1;
    }
  }
  assert.ok(compared > 200, `compared only ${compared} fields`);
});
