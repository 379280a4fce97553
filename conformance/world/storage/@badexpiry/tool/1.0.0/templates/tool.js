export const tool = '@badexpiry';
