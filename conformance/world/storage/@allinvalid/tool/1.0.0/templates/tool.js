export const tool = '@allinvalid';
