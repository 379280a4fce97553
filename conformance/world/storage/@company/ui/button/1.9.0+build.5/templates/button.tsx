// button 1.9.0+build.5
export const version = "1.9.0+build.5";
