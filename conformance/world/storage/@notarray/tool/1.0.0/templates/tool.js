export const tool = '@notarray';
