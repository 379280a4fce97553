export const tool = '@badexpirytype';
