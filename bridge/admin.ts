import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { DIGEST_SHOWN } from '../lib/api';
import { QueueError } from '../lib/errors';
import { isMsgid } from '../lib/ids';
import type { Envelope, InstanceInfo, QueueCount } from '../lib/store';
import { HttpQueueStore } from './client';
import { loadBridgeConfig } from './config';
import { idTokensFor } from './id-tokens';

/**
 * queue-rest's administrator commands, on the same configuration as the
 * bridge (ARG: the service's URL or the config file), with the
 * administrator's token (QUEUE_ADMIN_TOKEN, QUEUE_ADMIN_TOKEN_FILE or the
 * config file's admin-token-file), or else the bridge's own; under
 * `auth iam`, with Google ID tokens as the bridge gets them
 * (bridge/id-tokens.ts), the token if any in X-Queue-Token:
 *
 *   queue-rest status ARG                 instances with their leases, messages by owner and state
 *   queue-rest list ARG [--owner ID]      the queued messages (of an owner) and their envelopes
 *   queue-rest show ARG MSGID             a message and its envelopes
 *   queue-rest takeover ARG [options]     claim the messages of dead instances for a live
 *                                         instance, whose bridge hands them to its smtpd
 *   queue-rest drain ARG [--instance ID]  hand a live instance's mail to the others now
 *   queue-rest credential issue INSTANCE ARG | issue --admin ARG | revoke INSTANCE|DIGEST ARG | list ARG
 *                                         the credentials of QUEUE_AUTH=tokens
 */
export const ADMIN_COMMANDS = ['status', 'list', 'show', 'takeover', 'drain', 'credential'] as const;

const USAGE = `usage: queue-rest status URL|CONFIG [--json]
       queue-rest list URL|CONFIG [--owner ID] [--json]
       queue-rest show URL|CONFIG MSGID [--json]
       queue-rest takeover URL|CONFIG [--instance ID] [--from ID,...] [--dry-run] [--json]
       queue-rest drain URL|CONFIG [--instance ID] [--wait SECONDS] [--json]
       queue-rest credential issue INSTANCE URL|CONFIG [--json]
       queue-rest credential issue --admin URL|CONFIG [--json]
       queue-rest credential revoke INSTANCE|DIGEST URL|CONFIG [--json]
       queue-rest credential list URL|CONFIG [--json]`;

type Print = (json: unknown, text: () => string) => void;

/** How often `drain` looks at the pool. */
const DRAIN_POLL_MS = 250;

export async function admin(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      instance: { type: 'string' },
      owner: { type: 'string' },
      from: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      wait: { type: 'string' },
      admin: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  const [command, ...args] = positionals;
  // credential names what it does first and the service last
  const [arg, ...rest] = command === 'credential' ? [args.at(-1), ...args.slice(0, -1)] : args;
  const config = loadBridgeConfig(arg);
  const token = config.adminToken ?? config.token;
  const idToken = await idTokensFor(config);
  const store = new HttpQueueStore({
    baseUrl: config.url,
    token,
    idToken,
    timeoutMs: config.timeoutMs,
    budgetMs: config.retryBudgetMs,
    limits: config.limits,
  });
  const print: Print = (json, text) => process.stdout.write(values.json ? JSON.stringify(json, null, 2) + '\n' : text());
  try {
    if (command === 'status') {
      const { instances, counts } = await store.queueStatus();
      print({ instances, counts }, () =>
        [
          'instance             lease      ends (s)  walk done  started',
          ...instances.map(
            (i) =>
              `${i.instance.padEnd(20)} ${leaseState(i).padEnd(9)} ${String(Math.round((i.leaseUntil.getTime() - Date.now()) / 1000)).padStart(9)}  ${(i.walkDone ? 'yes' : 'no').padEnd(9)}  ${i.startedAt.toISOString()}`,
          ),
          '',
          'owner                lease      state      messages  oldest (s)',
          ...counts.map((c) => {
            const owner = instances.find((i) => i.instance === c.owner);
            const oldest = c.oldestAt ? String(Math.round((Date.now() - c.oldestAt.getTime()) / 1000)) : '-';
            return `${c.owner.padEnd(20)} ${(owner ? leaseState(owner) : '-').padEnd(9)}  ${c.state.padEnd(10)} ${String(c.messages).padStart(8)}  ${oldest.padStart(10)}`;
          }),
          '',
        ].join('\n'),
      );
      return 0;
    }
    if (command === 'list') {
      const messages = new Map<string, string[]>();
      let cursor: string | undefined;
      do {
        const page = await store.envelopeWalk({ owner: values.owner, cursor, limit: 1000 });
        for (const e of page.items) messages.set(e.evpid.slice(0, 8), [...(messages.get(e.evpid.slice(0, 8)) ?? []), e.evpid]);
        cursor = page.cursor ?? undefined;
      } while (cursor);
      const rows = [...messages].map(([msgid, evpids]) => ({ msgid, evpids }));
      print(rows, () => rows.map((m) => `${m.msgid}  ${m.evpids.length} envelope(s): ${m.evpids.join(' ')}\n`).join(''));
      return 0;
    }
    if (command === 'show') {
      const msgid = rest[0];
      if (!msgid || !isMsgid(msgid)) throw new Error('show needs a msgid: 8 lowercase hex digits');
      const envelopes: Envelope[] = [];
      let walk = await store.messageWalk(msgid);
      envelopes.push(...walk.items);
      while (walk.cursor) {
        walk = await store.messageWalk(msgid, { cursor: walk.cursor });
        envelopes.push(...walk.items);
      }
      print({ message: walk.message, envelopes: envelopes.map((e) => ({ evpid: e.evpid, data: e.data.toString('base64') })) }, () =>
        [
          ...Object.entries(walk.message).map(([k, v]) => `${k}: ${v instanceof Date ? v.toISOString() : v}`),
          ...envelopes.flatMap((e) => ['', `envelope ${e.evpid}:`, printable(e.data)]),
          '',
        ].join('\n'),
      );
      return 0;
    }
    if (command === 'takeover') return await takeover(store, values.instance ?? config.instance, values.from?.split(','), values['dry-run'], print);
    if (command === 'drain') {
      const waitMs = values.wait === undefined ? 2 * config.leaseMs + 30_000 : Number(values.wait) * 1000;
      if (!(waitMs >= 0)) throw new Error('--wait takes a number of seconds');
      return await drain(store, values.instance ?? config.instance, config.leaseMs, waitMs, print);
    }
    if (command === 'credential' && rest.length > 0) return await credential(store, rest, values.admin, print);
    process.stderr.write(`${USAGE}\n`);
    return 2;
  } finally {
    await store.close();
  }
}

/**
 * Claims the orphans for a live instance. Its bridge learns from its next
 * heartbeat (within a quarter lease) that it owns mail its smtpd does not
 * know, and hands each envelope to its smtpd (bridge/reconcile.ts). The
 * command itself runs no smtpctl: two processes discovering the same
 * envelope would make smtpd exit.
 */
async function takeover(
  store: HttpQueueStore,
  instance: string,
  from: string[] | undefined,
  dryRun: boolean,
  print: Print,
): Promise<number> {
  const target = (await store.instanceList()).find((i) => i.instance === instance);
  if (!target?.alive) {
    process.stderr.write(`takeover: ${instance} is not a live instance: start it first\n`);
    return 1;
  }
  const claimed: string[] = [];
  let purged = 0;
  for (let more = !dryRun; more; ) {
    const page = await store.queueTakeover(instance, { from, limit: 200 });
    purged += page.purged;
    more = page.more;
    claimed.push(...page.claimed.flatMap((c) => c.evpids));
  }
  print({ instance, claimed, purged }, () => `${instance}: ${claimed.length} envelopes taken over (its bridge hands them to its smtpd), ${purged} uncommitted messages purged\n`);
  return 0;
}

/**
 * Hands a live instance's mail to the others now (docs/pool.md: Planned
 * drain): asks the drain, which the instance's bridge learns at its next
 * renewal (within a quarter lease); it fences itself, waits for its
 * deliveries under way, and ends its lease; the survivors' automatic
 * takeover rounds then claim its mail. The command waits until the
 * instance owns no queued mail, and says how long each step took.
 */
async function drain(store: HttpQueueStore, instance: string, leaseMs: number, waitMs: number, print: Print): Promise<number> {
  const t0 = Date.now();
  const queuedOf = (counts: QueueCount[]) => counts.find((c) => c.owner === instance && c.state === 'queued')?.messages ?? 0;
  const first = await store.queueStatus();
  const target = first.instances.find((i) => i.instance === instance);
  if (!target?.alive) {
    process.stderr.write(`drain: ${instance} holds no lease: nothing to drain (its mail goes to the survivors; see queue-rest takeover)\n`);
    return 1;
  }
  const messages = queuedOf(first.counts);
  let leaseEndedAfterMs: number | undefined;
  for (;;) {
    const { instances, counts } = await store.queueStatus();
    const now = instances.find((i) => i.instance === instance)!;
    // asked again until it holds: a renewal racing the ask may have overwritten it (lib/queue.ts instanceHeartbeat)
    if (now.alive && !now.draining) await store.instanceHeartbeat(instance, leaseMs, { drain: 'ask' }).catch(ignoreNoLease);
    if (!now.alive) leaseEndedAfterMs ??= Date.now() - t0;
    const left = queuedOf(counts);
    if (!now.alive && left === 0) break;
    if (Date.now() - t0 > waitMs) {
      const where = now.alive ? 'its lease still holds (is its bridge running this version?)' : `${left} messages are not claimed yet (is another instance alive?)`;
      process.stderr.write(`drain: ${instance} not drained after ${Math.round(waitMs / 1000)} s: ${where}\n`);
      return 1;
    }
    await sleep(DRAIN_POLL_MS);
  }
  const handedOverAfterMs = Date.now() - t0;
  print({ instance, messages, leaseEndedAfterMs, handedOverAfterMs }, () => `${instance}: drained; its lease ended after ${(leaseEndedAfterMs! / 1000).toFixed(1)} s, its ${messages} queued messages were the others' after ${(handedOverAfterMs / 1000).toFixed(1)} s\n`);
  return 0;
}

/** The instance's lease ended between the status and the ask: nothing left to ask. */
function ignoreNoLease(err: unknown): void {
  if (err instanceof QueueError && err.code === 'conflict' && err.details.reason === 'no_lease') return;
  throw err;
}

function leaseState(i: InstanceInfo): string {
  if (i.draining) return i.alive ? 'draining' : 'drained';
  return i.alive ? 'alive' : 'EXPIRED';
}

/**
 * Issues, revokes and lists the credentials of QUEUE_AUTH=tokens. An issued
 * token is printed once, alone on stdout (for a file only root can read),
 * and is not kept anywhere else.
 */
async function credential(store: HttpQueueStore, [action, target]: (string | undefined)[], asAdmin: boolean, print: Print): Promise<number> {
  const grant = asAdmin ? target === undefined && { role: 'admin' as const } : target !== undefined && { role: 'mx' as const, instance: target };
  if (action === 'issue' && grant) {
    const issued = await store.credentialIssue(grant);
    print(issued, () => `${issued.token}\n`);
    process.stderr.write(`credential ${issued.credential.digest} for ${issued.credential.instance ?? 'an administrator'}: its token is printed this once, and kept nowhere\n`);
    return 0;
  }
  if (action === 'revoke' && target !== undefined) {
    const byDigest = new RegExp(`^[0-9a-f]{${DIGEST_SHOWN},64}$`).test(target) && (await store.credentialList()).some((c) => target.startsWith(c.digest) || c.digest.startsWith(target));
    const revoked = await store.credentialRevoke(byDigest ? { digest: target } : { instance: target });
    print(revoked, () => `${revoked.length} credential(s) revoked: ${revoked.map((c) => c.digest).join(' ')}\n`);
    return 0;
  }
  if (action === 'list' && target === undefined) {
    const all = await store.credentialList();
    print(all, () =>
      [
        'digest        role   instance             issued                    revoked',
        ...all.map((c) => `${c.digest.padEnd(13)} ${c.role.padEnd(6)} ${(c.instance ?? '-').padEnd(20)} ${c.issuedAt.toISOString()}  ${c.revokedAt?.toISOString() ?? '-'}`),
        '',
      ].join('\n'),
    );
    return 0;
  }
  process.stderr.write(`${USAGE}\n`);
  return 2;
}

function printable(data: Buffer): string {
  const text = data.toString('utf8');
  return /^[\t\n\r\x20-\x7e\u00a0-\uffff]*$/.test(text) ? text.replace(/\n$/, '') : `(binary, ${data.length} bytes) ${data.toString('base64')}`;
}
