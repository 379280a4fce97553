export default function button() {}
