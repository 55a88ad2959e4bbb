import { parseArgs } from 'node:util';
import { writeResults } from './report';
import { benchScale } from './scale';
import { benchService } from './service';
import { benchSmtpd } from './smtpd';

/** `npm run bench`: every benchmark, side by side in one run; tables on stdout, JSON in bench/results/. */
process.env.METADATA_SERVER_DETECTION ??= 'none';
process.env.LOG_LEVEL ??= 'silent';

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    iterations: { type: 'string', default: '200' },
    messages: { type: 'string', default: '200' },
    'big-messages': { type: 'string', default: '20' },
    clients: { type: 'string', default: '4' },
    scale: { type: 'string', default: '1000,10000' },
  },
});

async function main(): Promise<void> {
  const results: Record<string, unknown> = { machine: { cpus: require('node:os').cpus().length, node: process.version }, startedAt: new Date().toISOString() };
  if (!values.only || values.only === 'service') {
    const service = await benchService(Number(values.iterations));
    process.stdout.write(service.table);
    results.service = service.results;
  }
  if (!values.only || values.only === 'smtpd') {
    const smtpd = await benchSmtpd({ messages: Number(values.messages), bigMessages: Number(values['big-messages']), clients: Number(values.clients) });
    process.stdout.write(smtpd.table);
    results.smtpd = smtpd.results;
  }
  if (!values.only || values.only === 'scale') {
    const scale = await benchScale(values.scale.split(',').map(Number));
    process.stdout.write(scale.table);
    results.scale = scale.results;
  }
  process.stdout.write(`\nresults: ${writeResults('bench', results)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
