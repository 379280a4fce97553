// button 1.10.0
export const version = "1.10.0";
