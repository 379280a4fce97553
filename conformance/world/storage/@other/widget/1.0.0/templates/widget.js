export const widget = 'other';
