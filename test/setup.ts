// tfjs-core's CommonJS build registers no gradients; the union package registers them all.
import '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
