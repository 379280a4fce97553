// button 2.0.0-rc.1
export const version = "2.0.0-rc.1";
