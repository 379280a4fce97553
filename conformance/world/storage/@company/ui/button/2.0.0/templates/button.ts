export type ButtonProps = { label: string };
