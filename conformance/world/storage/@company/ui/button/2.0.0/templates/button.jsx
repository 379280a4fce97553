export const Button = ({ children }) => <button>{children}</button>;
