import { parseArgs } from 'node:util';
import { isMsgid } from '../lib/ids';
import type { Envelope } from '../lib/store';
import { HttpQueueStore } from './client';
import { loadBridgeConfig } from './config';

/**
 * queue-rest's administrator commands, on the same configuration as the
 * bridge (ARG: the service's URL or the config file; the token from
 * QUEUE_TOKEN, QUEUE_TOKEN_FILE or the config file):
 *
 *   queue-rest status ARG                 instances with their leases, messages by owner and state
 *   queue-rest list ARG [--owner ID]      the queued messages (of an owner) and their envelopes
 *   queue-rest show ARG MSGID             a message and its envelopes
 *   queue-rest takeover ARG [options]     claim the messages of dead instances for a live
 *                                         instance, whose bridge hands them to its smtpd
 */
export const ADMIN_COMMANDS = ['status', 'list', 'show', 'takeover'] as const;

const USAGE = `usage: queue-rest status URL|CONFIG [--json]
       queue-rest list URL|CONFIG [--owner ID] [--json]
       queue-rest show URL|CONFIG MSGID [--json]
       queue-rest takeover URL|CONFIG [--instance ID] [--from ID,...] [--dry-run] [--json]`;

export async function admin(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      instance: { type: 'string' },
      owner: { type: 'string' },
      from: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  const [command, arg, ...rest] = positionals;
  const config = loadBridgeConfig(arg);
  const store = new HttpQueueStore({ baseUrl: config.url, token: config.token, timeoutMs: config.timeoutMs, budgetMs: config.retryBudgetMs });
  const print = (json: unknown, text: () => string) => process.stdout.write(values.json ? JSON.stringify(json, null, 2) + '\n' : text());
  try {
    if (command === 'status') {
      const { instances, counts } = await store.queueStatus();
      print({ instances, counts }, () =>
        [
          'instance             alive  lease ends (s)  walk done  started',
          ...instances.map(
            (i) =>
              `${i.instance.padEnd(20)} ${(i.alive ? 'yes' : 'NO').padEnd(6)} ${String(Math.round((i.leaseUntil.getTime() - Date.now()) / 1000)).padStart(14)}  ${(i.walkDone ? 'yes' : 'no').padEnd(9)}  ${i.startedAt.toISOString()}`,
          ),
          '',
          'owner                state      messages',
          ...counts.map((c) => `${c.owner.padEnd(20)} ${c.state.padEnd(10)} ${String(c.messages).padStart(8)}`),
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
  print: (json: unknown, text: () => string) => void,
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

function printable(data: Buffer): string {
  const text = data.toString('utf8');
  return /^[\t\n\r\x20-\x7e\u00a0-\uffff]*$/.test(text) ? text.replace(/\n$/, '') : `(binary, ${data.length} bytes) ${data.toString('base64')}`;
}
