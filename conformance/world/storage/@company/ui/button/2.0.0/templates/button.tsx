export const Button = (p: { label: string }) => <button>{p.label}</button>;
