export const tool = '@secret';
