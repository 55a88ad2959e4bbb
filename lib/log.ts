import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** pino levels as Cloud Logging severities. */
const SEVERITY: Record<string, string> = {
  trace: 'DEBUG',
  debug: 'DEBUG',
  info: 'INFO',
  warn: 'WARNING',
  error: 'ERROR',
  fatal: 'CRITICAL',
};

/**
 * One JSON object per line with the fields Cloud Logging reads from a
 * function's or an App Engine app's stdout: severity, message, timestamp,
 * httpRequest. Ids go in as their own fields, in hex.
 */
export function createLogger(options: { level?: string; name?: string; destination?: DestinationStream } = {}): Logger {
  return pino(
    {
      level: options.level ?? process.env.LOG_LEVEL ?? 'info',
      messageKey: 'message',
      base: options.name ? { component: options.name } : undefined,
      timestamp: () => `,"timestamp":"${new Date().toISOString()}"`,
      formatters: { level: (label) => ({ severity: SEVERITY[label] ?? 'DEFAULT' }) },
    },
    options.destination,
  );
}
