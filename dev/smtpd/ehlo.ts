import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Whether smtpd answers SMTP yet: the probe that tells a started smtpd is ready. */

export async function waitUntilAnswering(port: number, exited: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  let lastError = 'no attempt';
  while (Date.now() < deadline) {
    if (exited()) throw new Error('smtpd exited before it accepted SMTP connections');
    try {
      await ehlo(port);
      return;
    } catch (error) {
      lastError = (error as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`smtpd did not answer EHLO on 127.0.0.1:${port} within ${ms} ms (last: ${lastError})`);
}

/** Connects, waits for the 220 greeting, says EHLO, waits for the last 250 line, and quits. */
function ehlo(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let received = '';
    let saidEhlo = false;
    const fail = (error: Error) => {
      socket.destroy();
      reject(error);
    };
    socket.setTimeout(2_000, () => fail(new Error('no answer within 2 s')));
    socket.on('error', fail);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      received += chunk;
      if (!saidEhlo && /^220 .*\r?\n/m.test(received)) {
        saidEhlo = true;
        received = '';
        socket.write('EHLO harness.test\r\n');
      } else if (saidEhlo && /^250 .*\r?\n/m.test(received)) {
        socket.end('QUIT\r\n');
        socket.destroy();
        resolve();
      } else if (/^[45]\d\d .*\r?\n/m.test(received)) {
        fail(new Error(`refused: ${received.trim()}`));
      }
    });
  });
}
