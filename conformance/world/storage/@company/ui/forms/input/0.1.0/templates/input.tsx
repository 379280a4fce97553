export const Input = () => <input />;
