export const core = 'company';
