process.env.METADATA_SERVER_DETECTION = 'none';
process.env.LOG_LEVEL ??= 'silent';
